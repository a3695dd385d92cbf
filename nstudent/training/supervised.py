"""Supervised training of a teacher (all noise on) with Keras' fit, and the fit loop
every stage shares: backups, validation, the averaged weights at the end."""

import contextlib
import dataclasses
import sys
import time

import keras
import numpy as np
from absl import logging

from nstudent import ranges
from nstudent.errors import InputError
from nstudent.keras_private import ema_pairs
from nstudent.training.optim import optimizer_for


CALIBRATIONS = ("none", "temperature")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    steps_per_epoch: int = 0  # 0: one pass over the labeled examples
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 0.05  # kernels only (not batch norm, not biases)
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0  # labels, and hard pseudo-labels
    jit_compile: str = "auto"  # auto: XLA on accelerators, not on CPU (5x slower here)
    bn_recalibration_batches: int = 100  # precise BN after training; 0: off
    ema_decay: float = 0.0  # 0: no moving average of the weights
    grad_accum_steps: int = 1
    eval_every_epochs: int = 0  # 0: no validation during training
    backup_every_steps: int = 0  # 0: back up at the end of each epoch only
    total_steps: int = 0  # > 0: exactly this many steps, whatever an epoch holds
    calibration: str = "none"  # temperature: fit T on the held-out labels at the end

    def __post_init__(self):
        ranges.check_fields(self, "grad_accum_steps", "ema_decay", "label_smoothing",
                            "eval_every_epochs", "backup_every_steps", "epochs",
                            "steps_per_epoch", "learning_rate", "weight_decay",
                            "warmup_epochs", train_steps="total_steps")
        if self.calibration not in CALIBRATIONS:
            raise InputError(f"--calibration must be one of {', '.join(CALIBRATIONS)}, got "
                             f"{self.calibration!r}.")

    def resolve(self, natural_steps):
        """This config with a concrete epoch: --steps_per_epoch steps, else
        `natural_steps` (one pass over the data). With `total_steps` the epochs split
        exactly that many steps into equal epochs no longer than that (the fewest
        such epochs), so students of different data sizes get the same budget."""
        steps = max(self.steps_per_epoch or natural_steps, 1)
        if not self.total_steps:
            return dataclasses.replace(self, steps_per_epoch=steps)
        epochs = -(-self.total_steps // steps)
        while self.total_steps % epochs:
            epochs += 1
        return dataclasses.replace(self, epochs=epochs,
                                   steps_per_epoch=self.total_steps // epochs)

    def backup_settings(self):
        """What makes the training state: a backup made with other values is refused.
        (How often to back up or validate does not change it.)"""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("eval_every_epochs", "backup_every_steps",
                             "bn_recalibration_batches", "jit_compile", "calibration")}

    def report(self):
        return dataclasses.asdict(self)


def parse_jit(value):
    return {"auto": "auto", "true": True, "false": False}[str(value).lower()]


MULTICLASS, MULTILABEL = "multiclass", "multilabel"


@keras.saving.register_keras_serializable("nstudent")
class BalancedBCE(keras.losses.Loss):
    """Multi-label labeled data: binary cross-entropy per class from logits, positives
    and negatives averaged apart (training/multilabel.py). Within one replica's batch;
    the student normalises over the global batch."""

    def __init__(self, name="balanced_bce", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        from nstudent.training.multilabel import balanced_bce, masked_bce_terms

        return balanced_bce(masked_bce_terms(y_true, keras.ops.ones_like(y_true), y_pred))


def classification_metrics(task=MULTICLASS):
    """Logged while training and validating: top-1 and top-5, or for multi-label the
    area under the precision-recall curve averaged over classes (Keras' interpolated
    estimate; the runs' reported mAP is evaluation/multilabel.py's)."""
    if task == MULTILABEL:
        return [keras.metrics.AUC(curve="PR", multi_label=True, from_logits=True,
                                  name="auc_pr")]
    return [keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")]


def classification_loss(task=MULTICLASS, label_smoothing=0.0):
    if task == MULTILABEL:
        return BalancedBCE()
    return keras.losses.CategoricalCrossentropy(from_logits=True,
                                                label_smoothing=label_smoothing)


def compile_for_training(model, config, steps_per_epoch, task=MULTICLASS):
    model.compile(
        optimizer=optimizer_for(config, steps_per_epoch, model.trainable_variables),
        loss=classification_loss(task, config.label_smoothing),
        metrics=classification_metrics(task),
        jit_compile=parse_jit(config.jit_compile))


def compile_for_evaluation(network, task=MULTICLASS):
    """A network trained inside a wrapper gets a loss and metrics to be evaluated."""
    if not getattr(network, "compiled", False):
        network.compile(loss=classification_loss(task), metrics=classification_metrics(task))


def scores_line(scores):
    """'loss 0.1234, top1 0.5678, ...' of an evaluate() dict, in its order."""
    return ", ".join(f"{k} {float(v):.4f}" for k, v in scores.items())


def progress_verbosity():
    """A live bar in a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of every epoch trained (across resumed fits); the first one
    includes tracing and compilation."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


@contextlib.contextmanager
def ema_weights(optimizer):
    """The optimizer's moving average in the model's variables for the duration
    (the raw weights wait in the average's slots), swapped back after."""
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        yield
        return

    def swap():
        for var, average in ema_pairs(optimizer):
            raw = keras.ops.convert_to_numpy(var)
            var.assign(average)
            average.assign(raw)

    swap()
    try:
        yield
    finally:
        swap()


class Validation(keras.callbacks.Callback):
    """Scores `network` on `dataset` every `every` epochs and after the last, with the
    averaged weights when there are: `val_*` in the epoch logs (so TensorBoard's
    validation run and the history get them) and one console line."""

    def __init__(self, network, dataset, every, source, task=MULTICLASS):
        super().__init__()
        self.network, self.dataset, self.every, self.source = network, dataset, every, source
        self.task = task
        # [{"epoch", "step", <scores>}]: metrics.json's validation_curve and curves.png,
        # what tells a run at its plateau from one cut short
        self.curve = []

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        compile_for_evaluation(self.network, self.task)
        with ema_weights(self.model.optimizer):
            scores = self.network.evaluate(self.dataset, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{k}": float(v) for k, v in scores.items()})
        self.curve.append({"epoch": epoch + 1, "step": int(keras.ops.convert_to_numpy(
            self.model.optimizer.iterations)), **{k: float(v) for k, v in scores.items()}})
        logging.info("Epoch %d: validation (%s) %s.", epoch + 1, self.source,
                     scores_line(scores))


@contextlib.contextmanager
def _finalize_later(optimizer):
    """fit() copies the moving average into the weights when it returns; a resumed
    stage may call fit twice, so that happens once, in `fit` below."""
    finalize = optimizer.finalize_variable_values
    optimizer.finalize_variable_values = lambda var_list: None
    try:
        yield
    finally:
        optimizer.finalize_variable_values = finalize


def fit(model, train_ds, steps_per_epoch, epochs, log_dir, backup=None, validation=None):
    """Runs fit with TensorBoard logs, resuming from `backup` (a StageBackup) at the
    step it was made; ends with the averaged weights in the model when the optimizer
    keeps them. `train_ds(start)`: the training stream after the `start` batches
    already trained on, so a resumed stage sees the batches an uninterrupted one
    would. Returns (history dict, seconds of each epoch trained here)."""
    timer = EpochTimer()
    callbacks = [c for c in (backup, validation) if c is not None]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
    callbacks.append(timer)
    epoch, step = backup.restore(model) if backup is not None else (0, 0)
    history = {}

    def run(first, last, steps):
        done = first * steps_per_epoch + (steps_per_epoch - steps)
        if done:
            logging.info("The data stream continues at batch %d.", done)
        with _finalize_later(model.optimizer):
            h = model.fit(train_ds(done), initial_epoch=first, epochs=last,
                          steps_per_epoch=steps, callbacks=callbacks, shuffle=False,
                          verbose=progress_verbosity())
        for key, values in h.history.items():
            history.setdefault(key, []).extend(values)

    if step and epoch < epochs:  # the rest of the epoch the backup was made in
        run(epoch, epoch + 1, steps_per_epoch - step)
        epoch += 1
    if epoch < epochs:
        run(epoch, epochs, steps_per_epoch)
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()
    model.optimizer.finalize_variable_values(model.trainable_variables)
    return history, timer.seconds


def steady_seconds(epoch_seconds):
    """Seconds of a steady epoch (without the first's tracing); nan when none ran."""
    if not epoch_seconds:
        return float("nan")
    return float(np.median(epoch_seconds[1:] or epoch_seconds))
