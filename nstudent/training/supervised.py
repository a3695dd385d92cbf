"""Supervised training of a teacher (all noise on) with Keras' fit."""

import dataclasses
import sys
import time

import keras

from nstudent.training.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    steps_per_epoch: int = 0  # 0: one pass over the labeled examples
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    jit_compile: str = "auto"  # auto: XLA on accelerators, not on CPU (5x slower here)
    bn_recalibration_batches: int = 100  # precise BN after training; 0: off


def parse_jit(value):
    return {"auto": "auto", "true": True, "false": False}[str(value).lower()]


def classification_metrics():
    return [keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")]


def compile_for_training(model, config, steps_per_epoch):
    total = steps_per_epoch * config.epochs
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate,
                                 config.weight_decay, total,
                                 int(config.warmup_epochs * steps_per_epoch)),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing),
        metrics=classification_metrics(),
        jit_compile=parse_jit(config.jit_compile))


def progress_verbosity():
    """A live bar in a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of every epoch; the first one includes tracing and compilation."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def fit(model, train_ds, steps_per_epoch, epochs, log_dir, validation=None):
    """Runs fit with TensorBoard logs; returns (history dict, seconds of each epoch)."""
    timer = EpochTimer()
    callbacks = [keras.callbacks.TensorBoard(log_dir, write_graph=False), timer]
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=validation, callbacks=callbacks, shuffle=False,
                        verbose=progress_verbosity())
    return history.history, timer.seconds
