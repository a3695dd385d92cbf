"""LARS (You et al., 2017), the optimizer of SimCLR's large-batch pretraining.

Keras has none. Per variable: g = gradient + weight_decay * w, then a layer-wise
trust ratio eeta * ||w|| / ||g|| (1 when either norm is 0) scales the learning
rate; v = momentum * v + lr * ratio * g; w = w - v. Variables excluded with
`exclude_from_weight_decay` (batch norm and biases, see optim.optimizer_for)
get neither the decay nor the ratio, as in SimCLR. The decay lives in the
gradient here, so Keras' decoupled decay (`weight_decay` of the base class)
stays off.
"""

import keras
from keras import ops


class LARS(keras.optimizers.Optimizer):
    def __init__(self, learning_rate=0.1, momentum=0.9, weight_decay=0.0, eeta=0.001,
                 name="lars", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.lars_weight_decay = float(weight_decay)
        self.eeta = float(eeta)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        velocity = self.momentums[self._get_variable_index(variable)]
        if self._use_weight_decay(variable):  # python bool: decided once per variable
            gradient = gradient + self.lars_weight_decay * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(gradient)))
            ratio = ops.where((w_norm > 0) & (g_norm > 0),
                              self.eeta * w_norm / ops.maximum(g_norm, 1e-30), 1.0)
            lr = lr * ratio
        self.assign(velocity, self.momentum * velocity + lr * gradient)
        self.assign_sub(variable, velocity)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum,
                "weight_decay": self.lars_weight_decay, "eeta": self.eeta}
