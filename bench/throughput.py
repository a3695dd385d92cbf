"""Throughput: noisy-student and supervised training, pseudo-labeling, input pipeline.

  python bench/throughput.py --width_scale=0.5 --depth_scale=0.5 --image_size=32 \\
      --channels=1 --num_classes=10 --batch_size=128     # the main job, on a CPU
  KERAS_BACKEND=jax python bench/throughput.py --model=b0 --image_size=224 \\
      --batch_size=256 --precision=mixed_bfloat16 --steps=50   # on a GPU

Prints one JSON line per figure (images per second, steady state after a
warm-up epoch that pays for tracing and compilation):
- noisy_student_train: labeled + pseudo-labeled images per second through the
  project's input path and NoisyStudent's step (RandAugment, dropout and
  stochastic depth on);
- supervised_train: the teacher's fit on labeled batches, same input path;
- pseudo_label: teacher inference plus filtering and balancing, and (with
  tf.data) writing the shards, read back by noisy_student_train;
- input_pipeline: the augmented tf.data pipeline alone (no model);
- train_step: the supervised step alone, on one batch repeated from memory;
- pretrain_train: SimCLR pretraining, views per second (2 per image: both
  views counted) through ContrastiveLearner's step, the views made inside it.

--feed=tf_data is the project's real input pipeline. --feed=numpy feeds uint8
batches from host memory without TensorFlow (the GPU machine has none), so it
needs --randaugment_impl=device, and its pseudo_label figure writes no shards.
With --randaugment_impl=device (the default under JAX on a GPU) RandAugment,
flip and crop run inside the compiled step and the host ships uint8 pixels.
Images are random pixels, so any resolution runs without a dataset.
"""

import importlib.util
import itertools
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
flags.DEFINE_enum("stage_strides", "auto", ["auto", "imagenet", "small"],
                  "Stride plan of the stages (models.STAGE_STRIDES); auto: small at 24-64 px.")
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
flags.DEFINE_string("randaugment_impl", "auto",
                    "keras_cv|keras (tf.data) or device (in the step); auto as in training.")
flags.DEFINE_float("randaugment_magnitude", 9.0, "RandAugment magnitude M, 0-10.")
flags.DEFINE_enum("feed", "auto", ["auto", "tf_data", "numpy"],
                  "Input path; auto: tf_data where TensorFlow is installed, else numpy.")
flags.DEFINE_list("only", [], "Figures to measure (default: all).")
flags.DEFINE_enum("distribution", "none", ["auto", "none", "data_parallel"],
                  "As in training: data_parallel replicates the training figures over "
                  "every local device; --batch_size stays global.")
flags.DEFINE_bool("sync_batchnorm", False, "TensorFlow: synchronised batch norm.")
flags.DEFINE_integer("cpu_devices", 0, "Split the host CPU into this many devices "
                     "(TensorFlow logical devices / XLA host devices) to try data_parallel "
                     "without accelerators; 0: as found.")
FLAGS = flags.FLAGS
FIGURES = ("input_pipeline", "train_step", "supervised_train", "pseudo_label",
           "noisy_student_train", "pretrain_train")


def _steady(epoch_seconds, images_per_epoch):
    import numpy as np

    return images_per_epoch / float(np.median(epoch_seconds[1:] or epoch_seconds))


def _random_uint8(n, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, FLAGS.image_size, FLAGS.image_size, FLAGS.channels),
                          np.uint8)
    return images, rng.integers(0, FLAGS.num_classes, n).astype(np.int64)


class NumpyFeed:
    """Batches cut from uint8 arrays in host memory: what the GPU machine can feed.

    Keras' JAX trainer puts each batch on the device one step ahead, so the
    copy overlaps the previous step; uint8 makes it a quarter of float32's.
    """

    def __init__(self, images, targets, batch_size):
        self.images, self.targets, self.batch_size = images, targets, batch_size

    def batch(self, step):
        start = (step * self.batch_size) % (len(self.images) - self.batch_size + 1)
        end = start + self.batch_size
        return self.images[start:end], self.targets[start:end]


def _numpy_batches(*feeds):
    """Endless generator of one batch per feed (a tuple when several)."""
    step = 0
    while True:
        batches = tuple(feed.batch(step) for feed in feeds)
        yield batches[0] if len(batches) == 1 else batches
        step += 1


class Inputs:
    """The labeled and pseudo-labeled batches each figure trains on, per --feed."""

    def __init__(self, feed, input_config):
        import numpy as np

        self.feed, self.config = feed, input_config
        b = input_config.batch_size
        self.images, labels = _random_uint8(b * 4, seed=0)
        self.one_hot = np.eye(FLAGS.num_classes, dtype=np.float32)[labels]
        self.labels = labels

    def labeled(self):
        if self.feed == "numpy":
            return _numpy_batches(NumpyFeed(self.images, self.one_hot,
                                            self.config.batch_size))
        from nstudent import data
        from nstudent.data.sources import in_memory_split

        split = in_memory_split("train", self.images, self.labels)
        return data.train_dataset(split.dataset(), FLAGS.num_classes, self.config,
                                  num_examples=len(split))

    def one_batch(self):
        """A single training batch, repeated forever (the step alone)."""
        if self.feed == "numpy":
            b = self.config.batch_size
            return itertools.repeat((self.images[:b], self.one_hot[:b]))
        import tensorflow as tf

        return tf.data.Dataset.from_tensors(next(iter(self.labeled()))).repeat()


def _split_cpu(count):
    """Before TensorFlow or JAX start: `count` CPU devices."""
    if keras_backend() == "jax":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={count}")
    else:
        import tensorflow as tf

        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * count)


def keras_backend():
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def main(argv):
    if FLAGS.cpu_devices > 1:
        _split_cpu(FLAGS.cpu_devices)
    import keras

    from nstudent import augment, data, models
    from nstudent.training import distribute
    from nstudent.training.optim import make_optimizer, optimizer_for
    from nstudent.training.steps import NoisyStudent, with_device_noise
    from nstudent.training.supervised import (
        EpochTimer, TrainConfig, compile_for_training, parse_jit)

    feed = FLAGS.feed
    if feed == "auto":
        feed = "tf_data" if importlib.util.find_spec("tensorflow") else "numpy"
    impl = augment.resolve_impl(FLAGS.randaugment_impl)
    if feed == "numpy" and FLAGS.randaugment_impl == "auto":
        impl = "device"  # without tf.data, noise can only be made on the device
    if feed == "numpy" and impl not in ("device", "none"):
        raise app.UsageError(f"--feed=numpy needs --randaugment_impl=device (or none), "
                             f"not {impl}: host RandAugment runs in tf.data.")
    placement = distribute.configure_distribution(FLAGS.distribution, FLAGS.sync_batchnorm)
    keras.mixed_precision.set_global_policy(FLAGS.precision)
    only = set(FLAGS.only or FIGURES)
    if feed == "numpy":
        only.discard("input_pipeline")
    b, ratio, steps = FLAGS.batch_size, FLAGS.unlabeled_ratio, FLAGS.steps
    config = models.ModelConfig(
        variant=FLAGS.model, num_classes=FLAGS.num_classes, channels=FLAGS.channels,
        image_size=FLAGS.image_size, width_scale=FLAGS.width_scale,
        depth_scale=FLAGS.depth_scale, stem_stride=FLAGS.stem_stride,
        stage_strides=FLAGS.stage_strides)
    input_config = data.InputConfig(image_size=FLAGS.image_size, batch_size=b,
                                    randaugment_magnitude=FLAGS.randaugment_magnitude,
                                    randaugment_impl=impl)
    pseudo_config = data.InputConfig(**{**input_config.__dict__, "batch_size": b * ratio})
    inputs = Inputs(feed, input_config)
    train_config = TrainConfig(epochs=FLAGS.epochs, jit_compile=FLAGS.jit_compile)
    device = (keras.backend.backend() == "jax" and __import__("jax").devices()[0].device_kind
              or "cpu")
    tf_version = None
    if feed == "tf_data":
        import tensorflow as tf

        tf_version = tf.__version__
    common = {"model": FLAGS.model, "width_scale": FLAGS.width_scale,
              "depth_scale": FLAGS.depth_scale, "image_size": FLAGS.image_size,
              "batch_size": b, "precision": FLAGS.precision, "feed": feed,
              "randaugment_impl": impl, "backend": keras.backend.backend(),
              "device": device, "cpus": os.cpu_count(), "machine": platform.machine(),
              "keras": keras.__version__, "tensorflow": tf_version,
              "distribution": placement.mode, "replicas": placement.replicas}

    def report(figure, images_per_second, **extra):
        print(json.dumps({"bench": "throughput", "figure": figure,
                          "images_per_second": round(images_per_second, 1), **common,
                          **extra}), flush=True)

    def fit(model, network, ds, images_per_step):
        timer = EpochTimer()
        with distribute.synchronised_batch_norm(network, placement):
            model.fit(ds, epochs=FLAGS.epochs, steps_per_epoch=steps, callbacks=[timer],
                      verbose=0)
        return _steady(timer.seconds, steps * images_per_step)

    def supervised():
        with placement.scope():
            network = models.build_efficientnet(config)
            model = with_device_noise(network, input_config)
            compile_for_training(model, train_config, steps)
        return network, model

    if "input_pipeline" in only:
        it = iter(inputs.labeled())
        next(it)
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        report("input_pipeline", steps * b / (time.perf_counter() - start))
    if "train_step" in only:
        network, model = supervised()
        report("train_step", fit(model, network, inputs.one_batch(), b),
               jit_compile=bool(model.jit_compile))
    if "supervised_train" in only:
        network, model = supervised()
        report("supervised_train", fit(model, network, inputs.labeled(), b),
               jit_compile=bool(model.jit_compile))
    if "pretrain_train" in only:
        from nstudent.augment import ContrastiveViews
        from nstudent.models import HeadConfig, build_pretrain_network
        from nstudent.pretraining import ContrastiveLearner

        pretrain_config = TrainConfig(epochs=FLAGS.epochs, optimizer="lars",
                                      learning_rate=1.0, weight_decay=1e-4,
                                      jit_compile=FLAGS.jit_compile)
        with placement.scope():
            network = build_pretrain_network(config, HeadConfig())
            learner = ContrastiveLearner(network, ContrastiveViews(blur=FLAGS.image_size >= 96),
                                         FLAGS.num_classes, 0.1)
            learner.compile(optimizer=optimizer_for(pretrain_config, steps,
                                                    learner.trainable_variables),
                            jit_compile=parse_jit(FLAGS.jit_compile))
        unlabeled = inputs.labels.copy()
        unlabeled[1::2] = -1  # half the images unlabeled: the probe sees the rest
        if feed == "numpy":
            batches = _numpy_batches(NumpyFeed(inputs.images, unlabeled, b))
        else:
            import tensorflow as tf

            batches = tf.data.Dataset.from_tensor_slices((inputs.images, unlabeled)).repeat(
            ).batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        report("pretrain_train", fit(learner, network, batches, 2 * b), views_per_image=2,
               jit_compile=bool(learner.jit_compile))
    if only & {"pseudo_label", "noisy_student_train"}:
        teacher = models.build_efficientnet(config)
        n = FLAGS.label_images or 8 * b * ratio
        label = _label_with_shards if feed == "tf_data" else _label_in_memory
        pseudo, figures = label(teacher, config, n, b)
        if "pseudo_label" in only:
            report("pseudo_label", **figures)
        if "noisy_student_train" in only:
            if feed == "numpy":
                train = _numpy_batches(NumpyFeed(inputs.images, inputs.one_hot, b),
                                       NumpyFeed(*pseudo, b * ratio))
            else:
                import tensorflow as tf

                train = tf.data.Dataset.zip((inputs.labeled(), data.train_dataset(
                    pseudo.dataset(), FLAGS.num_classes, pseudo_config))).prefetch(
                        tf.data.AUTOTUNE)
            with placement.scope():
                network = models.build_efficientnet(config)
                student = NoisyStudent(with_device_noise(network, input_config))
                student.compile(optimizer=make_optimizer("adamw", 1e-3, 0.05,
                                                         steps * FLAGS.epochs, 0),
                                jit_compile=parse_jit(FLAGS.jit_compile))
            report("noisy_student_train", fit(student, network, train, b * (1 + ratio)),
                   unlabeled_ratio=ratio, jit_compile=bool(student.jit_compile))


def _label_with_shards(teacher, config, n, b):
    """The real stage: load the exported teacher, label, select, write shards."""
    from nstudent import data, export, pseudo_labels
    from nstudent.data.sources import in_memory_split

    tmp = tempfile.mkdtemp(prefix="nstudent-throughput-")
    info = data.DatasetInfo("synthetic", FLAGS.num_classes, FLAGS.channels,
                            tuple(str(i) for i in range(FLAGS.num_classes)))
    export.write_run(os.path.join(tmp, "teacher"), teacher, config, info, {})
    images, labels = _random_uint8(n, seed=1)
    def unlabeled(count):  # the first `count` images as a separate unlabeled source
        split = in_memory_split("unlabeled", images[:count], labels[:count])
        return data.StageData(info, split, unlabeled_source=split)

    label_config = pseudo_labels.LabelConfig(min_confidence=0.0, per_class=0, batch_size=b)
    teacher_path = os.path.join(tmp, "teacher")

    def label(count, out):  # both phases: label, then select and write
        stage_data = unlabeled(count)
        return pseudo_labels.pseudo_label(teacher_path, stage_data, label_config,
                                          os.path.join(tmp, out))

    label(min(n, 2 * b), "warm")  # once to warm up (tracing), then timed
    start = time.perf_counter()
    stats = label(n, "pl")
    seconds = time.perf_counter() - start
    shard = pseudo_labels.LabelShard(os.path.join(tmp, "pl"), 0, 1).stats()
    return pseudo_labels.load_pseudo_labels(os.path.join(tmp, "pl")), {
        "images_per_second": n / seconds, "records_written": stats["records"],
        "labeling_phase_images_per_second": round(shard["images_per_second_this_run"], 1)}


def _label_in_memory(teacher, config, n, b):
    """Teacher inference on uint8 batches plus soft labels, filtering and balancing."""
    from nstudent.pseudo_labels.selection import filter_and_balance, soften

    images, _ = _random_uint8(n, seed=1)
    teacher.predict(images[:b], batch_size=b, verbose=0)  # warm-up: tracing
    start = time.perf_counter()
    logits = teacher.predict(images, batch_size=b, verbose=0)
    inference = time.perf_counter() - start
    probs = soften(logits, 1.0, False)
    rows = filter_and_balance(probs, 0.0, 0).rows
    seconds = time.perf_counter() - start
    return (images[rows], probs[rows]), {
        "images_per_second": n / seconds, "shards_written": False,
        "inference_only_images_per_second": round(n / inference, 1)}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
