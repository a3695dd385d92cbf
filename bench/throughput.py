"""Throughput: noisy-student and supervised training, pseudo-labeling, input pipeline.

  python bench/throughput.py --model=b0 --image_size=224 --batch_size=256 \\
      --precision=mixed_bfloat16 --steps=50
  python bench/throughput.py --width_scale=0.5 --depth_scale=0.5 --image_size=32 \\
      --channels=1 --batch_size=128          # the default dataset's main job, on a CPU

Prints one JSON line per figure (images per second, steady state after a
warm-up epoch that pays for tracing and compilation):
- noisy_student_train: labeled + pseudo-labeled images per second through the
  project's input pipeline (RandAugment) and NoisyStudent's step (dropout,
  stochastic depth on); pseudo-labels read back from real shards;
- supervised_train: the teacher's fit on labeled batches, same pipeline;
- pseudo_label: teacher inference plus filtering, balancing and writing shards;
- input_pipeline: the augmented tf.data pipeline alone (no model);
- train_step: the supervised step alone, on one batch repeated from memory.
Images are random uint8 pixels, so any resolution runs without a dataset.
"""

import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
flags.DEFINE_string("model", "b0", "EfficientNet variant.")
flags.DEFINE_float("width_scale", 1.0, "Width multiplier.")
flags.DEFINE_float("depth_scale", 1.0, "Depth multiplier.")
flags.DEFINE_integer("image_size", 224, "Resolution.")
flags.DEFINE_integer("stem_stride", 2, "Stem stride.")
flags.DEFINE_integer("channels", 3, "Image channels.")
flags.DEFINE_integer("num_classes", 1000, "Classes.")
flags.DEFINE_integer("batch_size", 256, "Labeled batch size.")
flags.DEFINE_integer("unlabeled_ratio", 3, "Pseudo-labeled batch = ratio x batch.")
flags.DEFINE_integer("steps", 20, "Steps per timed epoch.")
flags.DEFINE_integer("epochs", 3, "Epochs; the first is warm-up and not counted.")
flags.DEFINE_integer("label_images", 0, "Images to pseudo-label; 0: 8 pseudo batches.")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                  "Keras dtype policy.")
flags.DEFINE_string("jit_compile", "auto", "auto|true|false.")
flags.DEFINE_list("only", [], "Figures to measure (default: all).")
FLAGS = flags.FLAGS
FIGURES = ("input_pipeline", "train_step", "supervised_train", "pseudo_label",
           "noisy_student_train")


def _split(n, seed):
    import numpy as np
    import tensorflow as tf

    from nstudent import data

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, FLAGS.image_size, FLAGS.image_size, FLAGS.channels),
                          np.uint8)
    labels = rng.integers(0, FLAGS.num_classes, n).astype(np.int64)
    return data.Split("train", labels,
                      lambda: tf.data.Dataset.from_tensor_slices((images, labels)))


def _steady(epoch_seconds, images_per_epoch):
    import numpy as np

    return images_per_epoch / float(np.median(epoch_seconds[1:] or epoch_seconds))


def main(argv):
    import keras
    import tensorflow as tf

    from nstudent import data, export, models, pseudo_labels, training
    from nstudent.evaluation import load_classifier
    from nstudent.training.supervised import EpochTimer, parse_jit

    keras.mixed_precision.set_global_policy(FLAGS.precision)
    only = set(FLAGS.only or FIGURES)
    b, ratio, steps = FLAGS.batch_size, FLAGS.unlabeled_ratio, FLAGS.steps
    config = models.ModelConfig(
        variant=FLAGS.model, num_classes=FLAGS.num_classes, channels=FLAGS.channels,
        image_size=FLAGS.image_size, width_scale=FLAGS.width_scale,
        depth_scale=FLAGS.depth_scale, stem_stride=FLAGS.stem_stride)
    input_config = data.InputConfig(image_size=FLAGS.image_size, batch_size=b)
    labeled = _split(b * 4, seed=0)
    train_config = training.TrainConfig(epochs=FLAGS.epochs, jit_compile=FLAGS.jit_compile)
    device = (keras.backend.backend() == "jax" and __import__("jax").devices()[0].device_kind
              or "cpu")
    common = {"model": FLAGS.model, "width_scale": FLAGS.width_scale,
              "depth_scale": FLAGS.depth_scale, "image_size": FLAGS.image_size,
              "batch_size": b, "precision": FLAGS.precision,
              "backend": keras.backend.backend(), "device": device,
              "cpus": os.cpu_count(), "machine": platform.machine(),
              "keras": keras.__version__, "tensorflow": tf.__version__}

    def report(figure, images_per_second, **extra):
        print(json.dumps({"bench": "throughput", "figure": figure,
                          "images_per_second": round(images_per_second, 1), **common,
                          **extra}), flush=True)

    def fit(model, ds, images_per_step):
        timer = EpochTimer()
        model.fit(ds, epochs=FLAGS.epochs, steps_per_epoch=steps, callbacks=[timer],
                  verbose=0)
        return _steady(timer.seconds, steps * images_per_step)

    labeled_ds = data.train_dataset(labeled.dataset(), FLAGS.num_classes, input_config)
    if "input_pipeline" in only:
        it = iter(labeled_ds)
        next(it)
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        report("input_pipeline", steps * b / (time.perf_counter() - start))
    if "train_step" in only:
        model = models.build_efficientnet(config)
        training.compile_for_training(model, train_config, steps)
        batch = next(iter(labeled_ds))
        report("train_step", fit(model, tf.data.Dataset.from_tensors(batch).repeat(), b),
               jit_compile=bool(model.jit_compile))
    if "supervised_train" in only:
        model = models.build_efficientnet(config)
        training.compile_for_training(model, train_config, steps)
        report("supervised_train", fit(model, labeled_ds, b),
               jit_compile=bool(model.jit_compile))
    if only & {"pseudo_label", "noisy_student_train"}:
        tmp = tempfile.mkdtemp(prefix="nstudent-throughput-")
        teacher = models.build_efficientnet(config)
        info = data.DatasetInfo("synthetic", FLAGS.num_classes, FLAGS.channels,
                                tuple(str(i) for i in range(FLAGS.num_classes)))
        export.write_run(os.path.join(tmp, "teacher"), teacher, config, info, {})
        classifier = load_classifier(os.path.join(tmp, "teacher"), prefer="keras")
        n = FLAGS.label_images or 8 * b * ratio
        unlabeled = _split(n, seed=1)
        label_config = pseudo_labels.LabelConfig(min_confidence=0.0, per_class=0,
                                                 batch_size=b)
        # once to warm up (tracing), then timed into a fresh folder
        pseudo_labels.label_shards(classifier, info, unlabeled, range(min(n, 2 * b)), [0],
                                   1, label_config, os.path.join(tmp, "warm"), {})
        start = time.perf_counter()
        stats = pseudo_labels.label_shards(classifier, info, unlabeled, range(n), [0], 1,
                                           label_config, os.path.join(tmp, "pl"), {})
        seconds = time.perf_counter() - start
        if "pseudo_label" in only:
            report("pseudo_label", n / seconds, records_written=stats[0]["records"],
                   inference_only_images_per_second=round(
                       stats[0]["images_per_second_labeling"], 1))
        if "noisy_student_train" in only:
            pl = pseudo_labels.load_pseudo_labels(os.path.join(tmp, "pl"))
            pseudo_config = data.InputConfig(image_size=FLAGS.image_size,
                                             batch_size=b * ratio)
            ds = tf.data.Dataset.zip((
                labeled_ds, data.train_dataset(pl.dataset(), FLAGS.num_classes,
                                               pseudo_config))).prefetch(tf.data.AUTOTUNE)
            student = training.NoisyStudent(models.build_efficientnet(config))
            student.compile(optimizer=training.make_optimizer("adamw", 1e-3, 0.05,
                                                              steps * FLAGS.epochs, 0),
                            jit_compile=parse_jit(FLAGS.jit_compile))
            report("noisy_student_train", fit(student, ds, b * (1 + ratio)),
                   unlabeled_ratio=ratio, jit_compile=bool(student.jit_compile))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
