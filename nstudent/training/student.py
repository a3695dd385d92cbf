"""Noisy student training: one step sees a labeled and a pseudo-labeled batch.

The two batches go through the student together (one forward pass, so batch
norm sees both, as in the paper) with all noise on: RandAugment in the input
pipeline, dropout and stochastic depth in the network. The loss is
cross-entropy on the labels plus `pseudo_loss_weight` times cross-entropy
against the teacher's soft labels; both parts are logged.
"""

import keras
from keras import ops


class NoisyStudent(keras.Model):
    """Trains `network` on ((labeled images, one-hot), (pseudo images, soft labels))."""

    def __init__(self, network, pseudo_loss_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.pseudo_loss_weight = float(pseudo_loss_weight)
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
            y_labeled, logits[:n], from_logits=True))
        pseudo = ops.mean(keras.losses.categorical_crossentropy(
            y_pseudo, logits[n:], from_logits=True))
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
            scaled = self.optimizer.scale_loss(losses[0])
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


def _teacher_network(path, model_config):
    """The teacher's Keras model, to start the student from; same architecture only."""
    from nstudent.evaluation import load_classifier

    classifier = load_classifier(path, prefer="keras")
    if classifier.keras_model is None:
        raise ValueError(f"--init_from_teacher needs the teacher's .keras file; {path!r} "
                         "has none.")
    info = classifier.info
    if info and info["model"] != model_config.to_dict():
        raise ValueError("--init_from_teacher needs the student to have the teacher's "
                         f"architecture; teacher {info['model']}, student "
                         f"{model_config.to_dict()}.")
    return classifier.keras_model


def train_student(out_dir, info, train_split, test_split, pseudo, model_config,
                  input_config, train_config, labels_per_class=0, seed=0,
                  unlabeled_ratio=3, pseudo_loss_weight=1.0, init_from_teacher=False):
    """Trains a noisy student on the labeled subset plus `pseudo` (PseudoLabels).

    An epoch is one pass over the pseudo-labeled images; each step takes
    batch_size labeled and unlabeled_ratio * batch_size pseudo-labeled images.
    Returns the metrics written to <out_dir>/metrics.json.
    """
    import time

    import tensorflow as tf
    from absl import logging

    from nstudent import data, models
    from nstudent.training.runs import finish_run, labeled_subset
    from nstudent.training.supervised import fit, parse_jit
    from nstudent.training.optim import make_optimizer

    start = time.time()
    if pseudo.num_classes != info.num_classes or list(pseudo.class_names) != list(
            info.class_names):
        raise data.DataError(
            f"The pseudo-labels in {pseudo.directory} have {pseudo.num_classes} classes "
            f"{list(pseudo.class_names)}; {info.name} has {info.num_classes} "
            f"{list(info.class_names)}.")
    if unlabeled_ratio < 1:
        raise ValueError(f"--unlabeled_ratio must be at least 1, got {unlabeled_ratio}.")
    batch = input_config.batch_size
    pseudo_batch = batch * unlabeled_ratio
    if pseudo.records < pseudo_batch:
        raise data.DataError(f"Only {pseudo.records} pseudo-labeled images for a pseudo "
                             f"batch of {pseudo_batch}; lower --batch_size.")
    labeled, _ = labeled_subset(info, train_split, labels_per_class, seed, batch)
    steps = train_config.steps_per_epoch or pseudo.records // pseudo_batch
    logging.info("Student: %d labeled + %d pseudo-labeled images, batches %d + %d, "
                 "%d steps per epoch.", len(labeled), pseudo.records, batch, pseudo_batch,
                 steps)
    labeled_ds = data.train_dataset(train_split.dataset(labeled), info.num_classes,
                                    input_config, seed=seed)
    pseudo_config = data.InputConfig(**{**input_config.__dict__, "batch_size": pseudo_batch})
    pseudo_ds = data.train_dataset(pseudo.dataset(), info.num_classes, pseudo_config,
                                   seed=None if seed is None else seed + 1)
    train_ds = tf.data.Dataset.zip((labeled_ds, pseudo_ds)).prefetch(tf.data.AUTOTUNE)

    network = models.build_efficientnet(model_config)
    teacher_params = pseudo.stats[0]["settings"].get("teacher_parameters")
    if teacher_params and network.count_params() < teacher_params:
        logging.warning("The student (%d parameters) is smaller than its teacher (%d): "
                        "noisy student expects an equal or larger student.",
                        network.count_params(), teacher_params)
    if init_from_teacher:
        teacher = _teacher_network(pseudo.stats[0]["settings"]["teacher"], model_config)
        network.set_weights(teacher.get_weights())
        logging.info("Student starts from the teacher's weights.")
    student = NoisyStudent(network, pseudo_loss_weight)
    student.compile(
        optimizer=make_optimizer(train_config.optimizer, train_config.learning_rate,
                                 train_config.weight_decay, steps * train_config.epochs,
                                 int(train_config.warmup_epochs * steps)),
        jit_compile=parse_jit(train_config.jit_compile))
    history, epoch_seconds = fit(student, train_ds, steps, train_config.epochs,
                                 f"{out_dir}/logs")
    return finish_run(
        out_dir, network, model_config, info, test_split, input_config, start, history,
        epoch_seconds, batch + pseudo_batch, steps, {
            "stage": "student", "labeled_examples": int(len(labeled)),
            "pseudo_labeled_examples": pseudo.records, "pseudo_labels": pseudo.directory,
            "teacher": pseudo.stats[0]["settings"].get("teacher"),
            "teacher_parameters": teacher_params, "unlabeled_ratio": unlabeled_ratio,
            "pseudo_loss_weight": pseudo_loss_weight,
            "init_from_teacher": bool(init_from_teacher),
            "jit_compile": bool(student.jit_compile)})
