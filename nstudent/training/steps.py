"""The models fit() trains, around the network: they add the noise and the losses.

Keras only (no TensorFlow import), so the numpy-fed benchmark runs them on the
GPU machine, which has JAX but no TensorFlow. The network alone is what gets
exported; these wrappers exist only while training.
"""

import keras
from keras import ops

from nstudent.augment.device import device_noise
from nstudent.training.distribute import scale_loss


class Noised(keras.Model):
    """`network` behind input noise that runs on the device while training.

    The noise stays out of the network (exports and evaluation never see it)
    but inside the step fit() compiles; DeviceNoise supports XLA, so
    jit_compile stays on.
    """

    def __init__(self, network, noise, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.noise = noise
        self.built = True

    def call(self, images, training=False):
        return self.network(self.noise(images, training=training), training=training)


def with_device_noise(network, input_config, seed=None):
    """What fit() trains: `network`, wrapped in DeviceNoise when the config asks for it."""
    noise = device_noise(input_config, seed)
    return network if noise is None else Noised(network, noise)


class NoisyStudent(keras.Model):
    """Trains `network` on ((labeled images, one-hot), (pseudo images, soft labels)).

    Both batches go through the student in one forward pass (batch norm sees
    both, as in the paper) with all noise on: RandAugment (in tf.data, or on
    uint8 batches when `network` is `with_device_noise`'s Noised), dropout and
    stochastic depth. The loss is
    cross-entropy on the labels plus `pseudo_loss_weight` times cross-entropy
    against the teacher's soft labels; both parts are logged. `label_smoothing`
    smooths the labels and, when they are one-hot (`hard_pseudo_labels`), the
    pseudo-labels; soft pseudo-labels are left as the teacher gave them.
    On several replicas (tf.distribute) each replica's loss is divided by their
    number, as Keras' own step does, so the summed gradient is the global mean's.
    """

    def __init__(self, network, pseudo_loss_weight=1.0, label_smoothing=0.0,
                 hard_pseudo_labels=False, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.pseudo_loss_weight = float(pseudo_loss_weight)
        self.label_smoothing = float(label_smoothing)
        self.pseudo_smoothing = float(label_smoothing) if hard_pseudo_labels else 0.0
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.labeled_loss_tracker = keras.metrics.Mean(name="labeled_loss")
        self.pseudo_loss_tracker = keras.metrics.Mean(name="pseudo_loss")
        self.labeled_top1 = keras.metrics.CategoricalAccuracy(name="labeled_top1")
        # how often the noised student agrees with the clean teacher's top class
        self.pseudo_top1 = keras.metrics.CategoricalAccuracy(name="pseudo_top1")
        self.built = True  # the network is; no data is needed to build anything

    def call(self, images, training=False):
        return self.network(images, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, self.labeled_loss_tracker, self.pseudo_loss_tracker,
                self.labeled_top1, self.pseudo_top1]

    def _noisy_student_losses(self, logits, y_labeled, y_pseudo):
        logits = ops.cast(logits, "float32")
        n = y_labeled.shape[0]
        labeled = ops.mean(keras.losses.categorical_crossentropy(
            y_labeled, logits[:n], from_logits=True, label_smoothing=self.label_smoothing))
        pseudo = ops.mean(keras.losses.categorical_crossentropy(
            y_pseudo, logits[n:], from_logits=True, label_smoothing=self.pseudo_smoothing))
        return labeled + self.pseudo_loss_weight * pseudo, labeled, pseudo

    def _update_metrics(self, losses, logits, y_labeled, y_pseudo):
        n = y_labeled.shape[0]
        for tracker, value in zip(self.metrics[:3], losses):
            tracker.update_state(value)
        self.labeled_top1.update_state(y_labeled, logits[:n])
        self.pseudo_top1.update_state(y_pseudo, logits[n:])
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, *args):
        # Keras calls train_step(data) on TensorFlow, train_step(state, data) on JAX.
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        if keras.backend.backend() == "tensorflow":
            return self._tf_train_step(*args)
        raise NotImplementedError(f"No noisy-student step for {keras.backend.backend()}.")

    def _tf_train_step(self, data):
        import tensorflow as tf

        (x_labeled, y_labeled), (x_pseudo, y_pseudo) = data
        images = ops.concatenate([x_labeled, x_pseudo], axis=0)
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            losses = self._noisy_student_losses(logits, y_labeled, y_pseudo)
            scaled = self.optimizer.scale_loss(scale_loss(losses[0]))
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return self._update_metrics(losses, logits, y_labeled, y_pseudo)

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_vars, metrics_vars = state
        (x_labeled, y_labeled), (x_pseudo, y_pseudo) = data
        images = ops.concatenate([x_labeled, x_pseudo], axis=0)

        def loss_fn(trainable, non_trainable):
            logits, non_trainable = self.stateless_call(
                trainable, non_trainable, images, training=True)
            losses = self._noisy_student_losses(logits, y_labeled, y_pseudo)
            mapping = list(zip(self.optimizer.variables, optimizer_vars))
            with keras.StatelessScope(state_mapping=mapping):
                scaled = self.optimizer.scale_loss(losses[0])
            return scaled, (losses, logits, non_trainable)

        (_, (losses, logits, non_trainable)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(trainable, non_trainable)
        trainable, optimizer_vars = self.optimizer.stateless_apply(
            optimizer_vars, grads, trainable)
        mapping = list(zip(self.metrics_variables, metrics_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._update_metrics(losses, logits, y_labeled, y_pseudo)
        metrics_vars = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)
