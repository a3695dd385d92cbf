"""The teacher over a stream of images: one compiled loop per chunk, no Python per batch.

The loop (a tf.function iterating a tf.data dataset) casts, preprocesses and
runs the network in inference mode, and gathers logits and source indices in
TensorArrays; tf.data reads and decodes the next batches meanwhile. A Keras
teacher runs as `models.inference_network` (batch norm folded into its convs).
Where every source image has one shape (arrays, TFDS), images are batched raw
and preprocessed per batch inside the loop; otherwise per image in tf.data.
Under the JAX backend a Keras teacher cannot run inside a tf.function: batches
are preprocessed in tf.data and go through its compiled predict step one by one
(JAX dispatches asynchronously, so reading still overlaps the network).
"""

import keras
import numpy as np
import tensorflow as tf

from nstudent.data.pipeline import preprocess_eval
from nstudent.errors import InputError


def _frozen(network, size, channels):
    """The network as one graph with its weights as constants: TensorFlow's graph
    optimiser can then fuse and pre-pack them (measured: BENCHMARKS.md)."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    concrete = tf.function(lambda x: network(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, size, size, channels], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    return lambda x: frozen(x)[0]


class TeacherInference:
    """logits(split, indices) -> (float32 logits [n, classes], int64 source indices [n])
    of the readable images at `indices`, in index order."""

    def __init__(self, classifier, batch_size):
        self.size, self.crop = classifier.image_size, classifier.crop_fraction
        self.batch_size, self.num_classes = batch_size, classifier.num_classes
        self.channels = classifier.channels
        if classifier.keras_model is not None:
            from nstudent.models import inference_network

            self._keras = inference_network(classifier.keras_model)
            if keras.backend.backend() == "tensorflow":
                self.network = _frozen(self._keras, self.size, classifier.channels)
        elif classifier.logits is not None:
            self.network = classifier._loaded.logits
        else:
            raise InputError(f"{classifier.path} has no logits function to label with.")
        self._loop = tf.function(self._run, reduce_retracing=True)
        self.in_graph = (classifier.keras_model is None
                         or keras.backend.backend() == "tensorflow")

    def dataset(self, split, indices):
        """(batches, preprocessed): batches of (uint8 images, source index). Arrays
        are batched raw and preprocessed a batch at a time in the loop; other sources
        are decoded and preprocessed a batch at a time in tf.data."""
        size, crop = self.size, self.crop
        if split.pixels:
            ds = split.batches(indices, self.batch_size).map(lambda x, y, i: (x, i))
            if self.in_graph:
                return ds.prefetch(2), False
            ds = ds.map(lambda x, i: (preprocess_eval(x, size, crop), i))
        else:
            ds = split.batches(indices, self.batch_size,
                               prepare=lambda x: preprocess_eval(x, size, crop),
                               shape=[size, size, self.channels]).map(lambda x, y, i: (x, i))
        return ds.prefetch(2), True

    def _run(self, iterator, steps, preprocessed):
        """Up to `steps` batches from `iterator` -> (logits, indices, exhausted)."""
        logits = tf.TensorArray(tf.float32, size=0, dynamic_size=True,
                                element_shape=tf.TensorShape([None, self.num_classes]))
        index = tf.TensorArray(tf.int64, size=0, dynamic_size=True,
                               element_shape=tf.TensorShape([None]))
        n, exhausted = tf.constant(0), tf.constant(False)
        for _ in tf.range(steps):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                exhausted = tf.constant(True)
                break
            images, i = batch.get_value()
            if not preprocessed:
                images = preprocess_eval(images, self.size, self.crop)
            logits = logits.write(n, tf.cast(self.network(tf.cast(images, tf.float32)),
                                             tf.float32))
            index = index.write(n, i)
            n += 1
        return logits.concat(), index.concat(), exhausted

    def stream(self, split, indices, images_per_call=16384):
        """Yields (logits, source indices) blocks over the readable images at `indices`
        (sorted), in order: one pipeline for all of them, one compiled call a block."""
        if not len(indices):
            return
        ds, preprocessed = self.dataset(split, indices)
        if not self.in_graph:
            for images, index in ds.as_numpy_iterator():
                yield (np.asarray(self._keras.predict_on_batch(images.astype(np.float32)),
                                  np.float32), index)
            return
        iterator = iter(ds)
        steps = tf.constant(max(1, images_per_call // self.batch_size))
        while True:
            logits, index, exhausted = self._loop(iterator, steps, preprocessed)
            if len(index):
                yield np.asarray(logits), np.asarray(index)
            if bool(exhausted):
                return

    def logits(self, split, indices):
        """All (logits, source indices) at once (for small sets and tests)."""
        blocks = list(self.stream(split, np.sort(np.asarray(indices))))
        if not blocks:
            return np.zeros((0, self.num_classes), np.float32), np.zeros(0, np.int64)
        return (np.concatenate([b[0] for b in blocks]),
                np.concatenate([b[1] for b in blocks]))
