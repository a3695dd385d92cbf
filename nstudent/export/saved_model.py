"""Exports: a `.keras` file and a TF Serving SavedModel on raw uint8 images.

The SavedModel's `serving_default` takes uint8 images [batch, H, W, C] of any
H and W, brings them to the training resolution as evaluation does (a square
resize, or the shorter side and a centre crop) and returns `probabilities`
(float32 [batch, classes]) and `classes` (int64 [batch]) (multi-label: sigmoid
`probabilities` and multi-hot `labels` at per-class thresholds); a pretraining run's
returns `embeddings` (the encoder's pooled features) and `projections`. The Keras part of
the graph comes from Keras' ExportArchive, so the same code exports under the
TensorFlow and the JAX backend (through jax2tf); the resize and softmax around
it are plain TensorFlow.
"""

import keras
import tensorflow as tf
from absl import logging

from nstudent.data.pipeline import preprocess_eval
from nstudent.export.atomic import atomic_path


def save_keras(model, path):
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def export_saved_model(model, path, image_size, channels, crop_fraction=0.0,
                       embeddings=False, temperature=None, thresholds=None):
    """`embeddings`: `model` is a pretraining network (a dict of embeddings and
    projections), served as such instead of probabilities and classes. `temperature`:
    serving returns softmax(logits / T), the calibrated probabilities (the `logits`
    endpoint stays the network's). `thresholds` (one per class): a multi-label
    classifier, served as sigmoid `probabilities` and multi-hot int64 `labels` (1 where
    the probability is at or above the class's threshold)."""
    archive = keras.export.ExportArchive()
    logits_fn = archive.track_and_add_endpoint(
        "embed" if embeddings else "logits", model,
        input_signature=[tf.TensorSpec((None, image_size, image_size, channels), tf.float32)])

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, channels), tf.uint8,
                                                name="images")])
    def serve(images):
        images = preprocess_eval(images, image_size, crop_fraction)
        if embeddings:
            outputs = logits_fn(tf.cast(images, tf.float32))
            return {k: tf.cast(outputs[k], tf.float32) for k in ("embeddings", "projections")}
        logits = tf.cast(logits_fn(tf.cast(images, tf.float32)), tf.float32)
        if thresholds is not None:
            probabilities = tf.sigmoid(logits)
            return {"probabilities": probabilities, "labels": tf.cast(
                probabilities >= tf.constant(thresholds, tf.float32), tf.int64)}
        if temperature:
            logits = logits / float(temperature)
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {"probabilities": probabilities,
                "classes": tf.argmax(probabilities, axis=-1)}

    archive.add_endpoint("serving_default", serve)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)  # TF logs every renamed input while saving
    try:
        with atomic_path(path) as tmp:
            archive.write_out(tmp, verbose=False)
    finally:
        logging.set_verbosity(verbosity)
