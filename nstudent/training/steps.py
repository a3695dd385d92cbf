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


class LossStep(keras.Model):
    """A training wrapper whose loss fit() cannot express: the subclass says what the
    step feeds its call (`step_inputs(data)`), the loss from the outputs
    (`step_losses(outputs, data)` -> (total, parts)) and the logs
    (`update_metrics(parts, outputs, data)`). This class owns the gradient step on
    TensorFlow and JAX. On several replicas (tf.distribute) each replica's loss is
    divided by their number, as Keras' own step does, so the summed gradient is the
    global mean's; on JAX the step sees the global batch."""

    def train_step(self, *args):
        # Keras calls train_step(data) on TensorFlow, train_step(state, data) on JAX.
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        if keras.backend.backend() == "tensorflow":
            return self._tf_train_step(*args)
        raise NotImplementedError(f"No custom step for {keras.backend.backend()}.")

    def _tf_train_step(self, data):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            outputs = self(self.step_inputs(data), training=True)
            total, parts = self.step_losses(outputs, data)
            scaled = self.optimizer.scale_loss(scale_loss(total))
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return self.update_metrics(parts, outputs, data)

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_vars, metrics_vars = state
        inputs = self.step_inputs(data)

        def loss_fn(trainable, non_trainable):
            outputs, non_trainable = self.stateless_call(
                trainable, non_trainable, inputs, training=True)
            total, parts = self.step_losses(outputs, data)
            mapping = list(zip(self.optimizer.variables, optimizer_vars))
            with keras.StatelessScope(state_mapping=mapping):
                scaled = self.optimizer.scale_loss(total)
            return scaled, (parts, outputs, non_trainable)

        (_, (parts, outputs, non_trainable)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(trainable, non_trainable)
        trainable, optimizer_vars = self.optimizer.stateless_apply(
            optimizer_vars, grads, trainable)
        mapping = list(zip(self.metrics_variables, metrics_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self.update_metrics(parts, outputs, data)
        metrics_vars = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)


def distillation_loss(teacher_probabilities, student_logits, temperature):
    """Per-example T^2 x cross-entropy(softmax(teacher / T), softmax(student / T)):
    `teacher_probabilities` are already softmax(teacher logits / T) (pseudo-labels
    made with --temperature=T); T^2 keeps the gradient's scale as T changes
    (Hinton et al., 2015)."""
    t = float(temperature)
    return t * t * keras.losses.categorical_crossentropy(
        teacher_probabilities, ops.cast(student_logits, "float32") / t, from_logits=True)


class TwoStreams(LossStep):
    """A student's step input: the labeled and the pseudo-labeled batch through
    `self.network` in one forward pass (batch norm sees both, as in the paper)."""

    def call(self, images, training=False):
        return self.network(images, training=training)

    def step_inputs(self, data):
        (x_labeled, _), (x_pseudo, _) = data
        return ops.concatenate([x_labeled, x_pseudo], axis=0)


class NoisyStudent(TwoStreams):
    """Trains `network` on ((labeled images, one-hot), (pseudo images, soft labels)).

    Both batches go through the student in one forward pass (batch norm sees
    both, as in the paper) with all noise on: RandAugment (in tf.data, or on
    uint8 batches when `network` is `with_device_noise`'s Noised), dropout and
    stochastic depth. The loss is `labeled_loss_weight` times cross-entropy on the
    labels plus `pseudo_loss_weight` times cross-entropy against the teacher's soft
    labels; every part is logged. `label_smoothing` smooths the labels and, when
    they are one-hot (`hard_pseudo_labels`), the pseudo-labels; soft pseudo-labels
    are left as the teacher gave them. `distill_temperature` T > 0 makes the pseudo
    part SimCLRv2's distillation loss (`distillation_loss`).
    """

    def __init__(self, network, pseudo_loss_weight=1.0, label_smoothing=0.0,
                 hard_pseudo_labels=False, distill_temperature=0.0,
                 labeled_loss_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.pseudo_loss_weight = float(pseudo_loss_weight)
        self.labeled_loss_weight = float(labeled_loss_weight)
        self.distill_temperature = float(distill_temperature)
        self.label_smoothing = float(label_smoothing)
        self.pseudo_smoothing = float(label_smoothing) if hard_pseudo_labels else 0.0
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.labeled_loss_tracker = keras.metrics.Mean(name="labeled_loss")
        self.pseudo_loss_tracker = keras.metrics.Mean(name="pseudo_loss")
        self.labeled_top1 = keras.metrics.CategoricalAccuracy(name="labeled_top1")
        # how often the noised student agrees with the clean teacher's top class
        self.pseudo_top1 = keras.metrics.CategoricalAccuracy(name="pseudo_top1")
        self.built = True  # the network is; no data is needed to build anything

    @property
    def metrics(self):
        return [self.loss_tracker, self.labeled_loss_tracker, self.pseudo_loss_tracker,
                self.labeled_top1, self.pseudo_top1]

    def step_losses(self, logits, data):
        (_, y_labeled), (_, y_pseudo) = data
        logits = ops.cast(logits, "float32")
        n = y_labeled.shape[0]
        labeled = ops.mean(keras.losses.categorical_crossentropy(
            y_labeled, logits[:n], from_logits=True, label_smoothing=self.label_smoothing))
        if self.distill_temperature:
            pseudo = ops.mean(distillation_loss(y_pseudo, logits[n:],
                                                self.distill_temperature))
        else:
            pseudo = ops.mean(keras.losses.categorical_crossentropy(
                y_pseudo, logits[n:], from_logits=True,
                label_smoothing=self.pseudo_smoothing))
        total = self.labeled_loss_weight * labeled + self.pseudo_loss_weight * pseudo
        return total, (total, labeled, pseudo)

    def update_metrics(self, losses, logits, data):
        (_, y_labeled), (_, y_pseudo) = data
        n = y_labeled.shape[0]
        for tracker, value in zip(self.metrics[:3], losses):
            tracker.update_state(value)
        self.labeled_top1.update_state(y_labeled, logits[:n])
        self.pseudo_top1.update_state(y_pseudo, logits[n:])
        return {m.name: m.result() for m in self.metrics}


class MultiLabelStudent(TwoStreams):
    """A multi-label noisy student: ((labeled images, multi-hot), (pseudo images,
    targets and mask side by side [batch, 2 x classes])), one forward pass, all noise
    on. The loss is `labeled_loss_weight` times the balanced BCE on the labels plus
    `pseudo_loss_weight` times the masked balanced BCE on the teacher's confident
    entries (`class_weights` per class), each normalised by the global batch's
    weights (training/multilabel.py), so one replica or several take the same step."""

    def __init__(self, network, num_classes, pseudo_loss_weight=1.0, labeled_loss_weight=1.0,
                 class_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.num_classes = int(num_classes)
        self.pseudo_loss_weight = float(pseudo_loss_weight)
        self.labeled_loss_weight = float(labeled_loss_weight)
        self.class_weights = None if class_weights is None else [float(w) for w in
                                                                 class_weights]
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.labeled_loss_tracker = keras.metrics.Mean(name="labeled_loss")
        self.pseudo_loss_tracker = keras.metrics.Mean(name="pseudo_loss")
        self.labeled_auc = keras.metrics.AUC(  # built now: num_labels
            curve="PR", multi_label=True, num_labels=self.num_classes, from_logits=True,
            name="labeled_auc_pr")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.labeled_loss_tracker, self.pseudo_loss_tracker,
                self.labeled_auc]

    def step_losses(self, logits, data):
        from nstudent.training.multilabel import global_balanced_bce

        (_, y_labeled), (_, y_pseudo) = data
        logits = ops.cast(logits, "float32")
        n, c = y_labeled.shape[0], self.num_classes
        labeled = global_balanced_bce(y_labeled, ops.ones_like(y_labeled), logits[:n])
        weights = None if self.class_weights is None else ops.convert_to_tensor(
            self.class_weights, "float32")
        pseudo = global_balanced_bce(y_pseudo[:, :c], y_pseudo[:, c:], logits[n:], weights)
        total = self.labeled_loss_weight * labeled + self.pseudo_loss_weight * pseudo
        return total, (total, labeled, pseudo)

    def update_metrics(self, losses, logits, data):
        (_, y_labeled), _ = data
        for tracker, value in zip(self.metrics[:3], losses):
            tracker.update_state(value)
        self.labeled_auc.update_state(y_labeled, logits[:y_labeled.shape[0]])
        return {m.name: m.result() for m in self.metrics}
