"""Classifies new images with any export and writes a CSV: one row per image, its
top-k classes and their probabilities, as the model serves them.

  python tools/predict.py --model=runs/fashion_mnist/gen1 --input=folder:new_photos \\
      --output=predictions.csv --top_k=3
  python tools/predict.py --model=runs/teacher/saved_model --input=tfrecord:shards/ ...

--model: a run folder, a .keras file or a SavedModel folder. --input: folder:PATH
(every image under PATH; the row names the file), tfrecord:PATH or tfds:NAME[:SPLIT]
(the row names the record's index). Images are converted to the model's channels
and prepared as serving_default prepares them (a square resize, or the shorter
side and a centre crop); unreadable files stop the run with their name, or with
--skip_corrupt_images are skipped and counted. The CSV is written whole or not at all.
A multi-label model's CSV has, per image, every class at or above its threshold
(the run's, as serving_default's `labels`; `;`-separated, empty when none) and
each class's sigmoid probability.
"""

import csv
import os
import time

from absl import flags, logging

from nstudent.startup import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports it
from nstudent import cli  # noqa: E402
from nstudent.errors import InputError  # noqa: E402

flags.DEFINE_string("model", None, "Run folder, .keras file or SavedModel folder.",
                    required=True)
flags.DEFINE_enum("prefer", "saved_model", ["saved_model", "keras"],
                  "Which export of a run folder to load.")
flags.DEFINE_string("input", None, "Images to classify: folder:PATH, tfrecord:PATH or "
                    "tfds:NAME[:SPLIT].", required=True)
flags.DEFINE_string("output", None, "The CSV to write.", required=True)
flags.DEFINE_integer("top_k", 3, "Classes per image, most probable first (at most the "
                     "model's classes). A multi-label model writes every class above "
                     "its threshold instead.")
flags.DEFINE_integer("batch_size", 256, "Images per batch.")
flags.DEFINE_integer("channels", 0, "Expect the model to take this many channels (1 or "
                     "3); 0: whatever it takes (images are converted to it).")
flags.DEFINE_bool("skip_corrupt_images", False, "Skip unreadable images (counted) "
                  "instead of stopping with an error that names the file.")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data folder.")
FLAGS = flags.FLAGS
LOG_EVERY_SECONDS = 10.0


def check_flags():
    cli.check_range("top_k", FLAGS.top_k, 1, True, None, False)
    cli.check_range("batch_size", FLAGS.batch_size, 1, True, None, False)
    if FLAGS.channels not in (0, 1, 3):
        raise InputError(f"--channels must be 0, 1 or 3, got {FLAGS.channels}.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.output))):
        raise InputError(f"--output: no folder {os.path.dirname(FLAGS.output)!r}.")


def _batches(split, classifier, batch_size):
    """(float32 prepared images, source indices) batches in split order."""
    import tensorflow as tf

    from nstudent.data.pipeline import preprocess_eval

    size, crop = classifier.image_size, classifier.crop_fraction
    ds = split.dataset(with_index=True).map(
        lambda image, label, index: (tf.cast(preprocess_eval(image, size, crop),
                                             tf.float32), index),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def predict(classifier, split, top_k, batch_size, out_path):
    """Writes the CSV (temporary name, then renamed); returns the rows written."""
    names = ((classifier.info or {}).get("dataset") or {}).get("class_names")
    tmp = f"{out_path}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            written = _write_rows(csv.writer(f), classifier, split, top_k, batch_size, names)
        if not written:
            raise InputError(f"{FLAGS.input}: no readable image to classify.")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):  # stopped part-way: nothing half-written stays
            os.remove(tmp)
    return written


def _write_rows(writer, classifier, split, top_k, batch_size, names):
    import numpy as np

    written, start, last_log, k = 0, time.time(), time.time(), None
    for images, indices in _batches(split, classifier, batch_size).as_numpy_iterator():
        probs = np.asarray(classifier.probabilities(images), np.float64)
        if k is None:
            k = min(top_k, probs.shape[1])
            names = names or [str(c) for c in range(probs.shape[1])]
            writer.writerow(["image", "labels", *names] if classifier.multilabel else
                            ["image"] + [f"{col}_{i}" for i in range(1, k + 1)
                                         for col in ("class", "probability")])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        above = probs >= classifier.thresholds[None, :] if classifier.multilabel else None
        for row, index in enumerate(indices):
            image = split.paths[index] if split.paths is not None else int(index)
            if classifier.multilabel:
                writer.writerow([image, ";".join(n for n, a in zip(names, above[row]) if a),
                                 *(f"{p:.6f}" for p in probs[row])])
            else:
                writer.writerow([image] + [v for c in top[row]
                                           for v in (names[c], f"{probs[row, c]:.6f}")])
        written += len(indices)
        if time.time() - last_log > LOG_EVERY_SECONDS:
            last_log = time.time()
            logging.info("%d of %d images, %.0f images/s.", written, len(split),
                         written / (last_log - start))
    return written


def main(argv):
    del argv
    from nstudent import data, evaluation

    def stage():
        classifier = evaluation.load_classifier(FLAGS.model, prefer=FLAGS.prefer,
                                                multilabel=True)
        if FLAGS.channels and FLAGS.channels != classifier.channels:
            raise InputError(f"{FLAGS.model} takes {classifier.channels}-channel images, "
                             f"not --channels={FLAGS.channels}.")
        if not classifier.image_size:
            raise InputError(f"{FLAGS.model}: cannot tell the model's image size (no "
                             "model_info.json and no logits endpoint).")
        split = data.load_unlabeled(FLAGS.input, classifier.channels,
                                    tfds_data_dir=FLAGS.tfds_data_dir,
                                    skip_corrupt=FLAGS.skip_corrupt_images, flag="--input")
        start = time.time()
        written = predict(classifier, split, FLAGS.top_k, FLAGS.batch_size, FLAGS.output)
        skipped = split.skipped_files()
        logging.info("Classified %d images in %.1f s (%d unreadable skipped%s); wrote %s.",
                     written, time.time() - start, len(skipped),
                     f", first: {skipped[0]}" if skipped else "", FLAGS.output)

    return cli.run_stage(stage, validate=check_flags)


if __name__ == "__main__":
    cli.main_of(main)
