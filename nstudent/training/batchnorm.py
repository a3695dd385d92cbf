"""Batch-norm statistics that are right whatever the training budget ("precise BN").

With momentum 0.99, a moving average forgets its start value only after a few
hundred steps: 0.99^248 = 8% of the initial variance 1.0 is still in it after
8 epochs of 31 steps, and a network that trains well tests at chance in
inference mode. Small labeled sets mean few steps, so every training stage
ends by recomputing each trainable batch-norm layer's moving mean and variance
as the average of its batch statistics over clean training batches (no
augmentation, dropout or stochastic depth), in one compiled forward pass per
batch. Frozen layers (fine-tuning) keep theirs: Keras runs them in inference mode.
"""

import contextlib

import keras
import numpy as np
from absl import logging


def _trainable_batch_norms(network):
    return [l for l in network.layers
            if isinstance(l, keras.layers.BatchNormalization) and l.trainable]


@contextlib.contextmanager
def _statistics_mode(network, norms):
    """momentum 0 (the moving stats become this batch's) and no dropout, restored after."""
    drops = [l for l in network.layers
             if isinstance(l, keras.layers.Dropout)]
    saved = [(l, "momentum", l.momentum) for l in norms] + [(l, "rate", l.rate) for l in drops]
    for layer, attr, _ in saved:
        setattr(layer, attr, 0.0)
    try:
        yield
    finally:
        for layer, attr, value in saved:
            setattr(layer, attr, value)


def _compiled_forward(network):
    """(trainable, non_trainable, images) -> the non-trainable values after a
    training-mode forward pass, compiled for the backend."""

    def forward(trainable, non_trainable, images):
        return network.stateless_call(trainable, non_trainable, images, training=True)[1]

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(forward)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(forward, reduce_retracing=True)
    return forward


def recalibrate_batch_norm(network, image_batches, max_batches=100):
    """Sets every trainable batch-norm layer's moving statistics to the mean of its batch
    statistics over up to `max_batches` batches of clean images. Returns the count used."""
    norms = _trainable_batch_norms(network)
    if not norms or max_batches <= 0:
        return 0
    paths = [v.path for v in network.non_trainable_variables]
    targets = [v for l in norms for v in (l.moving_mean, l.moving_variance)]
    positions = [paths.index(v.path) for v in targets]
    sums = [np.zeros(v.shape, np.float64) for v in targets]
    count = 0
    with _statistics_mode(network, norms):
        forward = _compiled_forward(network)
        trainable = [v.value for v in network.trainable_variables]
        non_trainable = [v.value for v in network.non_trainable_variables]
        for images in image_batches:
            if count >= max_batches:
                break
            values = forward(trainable, non_trainable, np.asarray(images))
            for total, pos in zip(sums, positions):
                total += np.asarray(values[pos], np.float64)
            count += 1
    if count:
        for variable, total in zip(targets, sums):
            variable.assign((total / count).astype(variable.dtype))
        logging.info("Batch-norm statistics of %d layers recomputed on %d clean batches.",
                     len(norms), count)
    return count
