"""Pseudo-labeling at scale: images/s and peak memory per shard, 1 shard vs 4, and the
teacher's inference speed at batch 128 and 512.

  python bench/pseudo_label_scale.py                      # 200,000 images
  python bench/pseudo_label_scale.py --repo=/tmp/old      # the same, with another checkout

The unlabeled set is --images synthetic PNGs (32 px, 1 channel, in TFRecords on
disk, so the source itself takes no memory). The teacher is the main job's model
(EfficientNet-B0 at width 0.5, depth 0.5, 32 px, 1 channel, 10 classes), untrained:
speed does not depend on its weights. Each phase of each shard runs as its own
process of tools/pseudo_label.py, timed from outside (process start included) with
its peak RSS from wait4. Prints one JSON line per figure.

inference: the network alone (nstudent's inference copy under tf.function,
float32 batches already in memory, as the peer figure was measured; beside it
the Keras model as built, for comparison), and the labeling path's compiled
loop over a uint8 array of 65,536 images (preprocessing included).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, machine  # noqa: E402

flags.DEFINE_integer("images", 200_000, "Unlabeled images.")
flags.DEFINE_string("repo", ROOT, "Checkout whose tools/pseudo_label.py runs.")
flags.DEFINE_list("shards", ["1", "4"], "Shard counts to run.")
flags.DEFINE_bool("inference", True, "Also measure the teacher's inference speed.")
flags.DEFINE_integer("repeats", 5, "Timed passes per inference figure (median).")
flags.DEFINE_integer("stream_images", 65536, "Images per labeling-path inference pass.")
flags.DEFINE_string("work_dir", "", "Where the data and outputs go (default: a temp dir).")
FLAGS = flags.FLAGS
MAIN_MODEL = dict(variant="b0", width_scale=0.5, depth_scale=0.5, image_size=32,
                  stem_stride=2, stage_strides="imagenet", channels=1, num_classes=10)


def _print(**figure):
    print(json.dumps(dict(figure, **machine(), date=time.strftime("%Y-%m-%d"))), flush=True)


def make_source(directory, n, files=8):
    """n random 32x32 grey PNGs in `files` TFRecords (a tfrecord: unlabeled source)."""
    import numpy as np
    import tensorflow as tf

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    per_file = -(-n // files)
    for f in range(files):
        count = min(per_file, n - f * per_file)
        pixels = rng.integers(0, 256, (count, 32, 32, 1), np.uint8)
        with tf.io.TFRecordWriter(os.path.join(directory, f"part-{f:03d}.tfrecord")) as w:
            for png in tf.data.Dataset.from_tensor_slices(pixels).map(
                    tf.io.encode_png, num_parallel_calls=tf.data.AUTOTUNE):
                feature = {"image": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[png.numpy()]))}
                w.write(tf.train.Example(features=tf.train.Features(
                    feature=feature)).SerializeToString())


def make_teacher(directory):
    from nstudent import data, export, models

    config = models.ModelConfig(**MAIN_MODEL)
    model = models.build_efficientnet(config)
    info = data.DatasetInfo("fashion_mnist", 10, 1, data.sources.FASHION_MNIST_CLASSES, 28)
    export.write_run(directory, model, config, info, {"parameters": model.count_params()})


# A small launcher process runs each tool: a child forked from this process (which
# has TensorFlow loaded) would count this process's pages in its own peak RSS.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=sys.stderr)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"status": status, "seconds": time.perf_counter() - start,
                  "rss_mib": usage.ru_maxrss / 1024}))
"""


def run(args):
    """Runs one tool process; returns (seconds, its peak RSS in MiB)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               PYTHONPATH=FLAGS.repo)  # nstudent comes from --repo
    with tempfile.TemporaryFile("w+") as log:
        result = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, sys.executable,
             os.path.join(FLAGS.repo, "tools", "pseudo_label.py"), *args],
            cwd=FLAGS.repo, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        out = json.loads(result.stdout)
        if out["status"]:
            log.seek(0)
            raise SystemExit(f"pseudo_label.py {' '.join(args)} failed:\n"
                             f"{log.read()[-3000:]}")
    return out["seconds"], out["rss_mib"]


def label_set(work, source, teacher, num_shards):
    """Labels the set as `num_shards` shards, one process each, then selects."""
    two_phase = "--phase" in open(os.path.join(FLAGS.repo, "tools",
                                               "pseudo_label.py")).read()
    out = os.path.join(work, f"out-{num_shards}")
    common = ["--dataset=fashion_mnist", "--channels=1", f"--teacher={teacher}",
              f"--unlabeled_dataset=tfrecord:{source}", f"--out={out}",
              f"--num_shards={num_shards}", "--min_confidence=0"]
    shards = []
    for i in range(num_shards):
        phase = ["--phase=label"] if two_phase else []
        seconds, rss = run([*common, *phase, f"--shard_index={i}"])
        shards.append({"seconds": round(seconds, 1), "peak_rss_mib": round(rss)})
    select = run([*common, "--phase=select"]) if two_phase else (0.0, 0.0)
    labeled = sum(s["seconds"] for s in shards)
    inside = {}
    if two_phase:  # the phases' own timing, without process start-up
        from nstudent.export.atomic import read_json

        label_s = sum(read_json(os.path.join(out, "labels", f"shard-{i:05d}-of-"
                                             f"{num_shards:05d}.json"))
                      ["seconds_labeling_this_run"] for i in range(num_shards))
        select_s = read_json(os.path.join(out, "stats.json"))["seconds_selecting"]
        inside = {"in_process_images_per_second_labeling": round(FLAGS.images / label_s),
                  "in_process_images_per_second_selecting": round(FLAGS.images / select_s),
                  "in_process_images_per_second_end_to_end": round(
                      FLAGS.images / (label_s + select_s))}
    _print(**inside, figure="pseudo_label_scale", repo=FLAGS.repo, images=FLAGS.images,
           num_shards=num_shards, images_per_shard=FLAGS.images // num_shards,
           shards=shards, select_seconds=round(select[0], 1),
           select_peak_rss_mib=round(select[1]),
           images_per_second_labeling=round(FLAGS.images / labeled),
           images_per_second_end_to_end=round(FLAGS.images / (labeled + select[0])))


def inference_speed():
    import numpy as np
    import tensorflow as tf

    from nstudent.data.sources import in_memory_split
    from nstudent.evaluation import load_classifier
    from nstudent.pseudo_labels.inference import TeacherInference

    teacher = os.path.join(tempfile.mkdtemp(), "teacher")
    make_teacher(teacher)
    classifier = load_classifier(teacher, prefer="keras")
    network = TeacherInference(classifier, 128).network  # folded and frozen
    rng = np.random.default_rng(0)
    plain = classifier.keras_model  # as Keras runs it: batch norm as separate ops
    for batch in (128, 512):
        x = tf.constant(rng.uniform(0, 255, (batch, 32, 32, 1)).astype(np.float32))
        runs, keras_runs = [], []
        for f, out in ((tf.function(network), runs),
                       (tf.function(lambda v: plain(v, training=False)), keras_runs)):
            for _ in range(3):
                f(x).numpy()
            for _ in range(FLAGS.repeats):
                start, n = time.perf_counter(), 0
                while time.perf_counter() - start < 2.0:
                    f(x).numpy()
                    n += batch
                out.append(n / (time.perf_counter() - start))
        n = FLAGS.stream_images  # one stream, as a shard's: set-up paid once per pass
        images = rng.integers(0, 256, (n, 28, 28, 1), np.uint8)  # Fashion-MNIST's size
        split = in_memory_split("unlabeled", images, np.zeros(n))
        inference = TeacherInference(classifier, batch)
        inference.logits(split, np.arange(2 * batch))  # tracing
        path = []
        for _ in range(FLAGS.repeats):
            start = time.perf_counter()
            inference.logits(split, np.arange(n))
            path.append(n / (time.perf_counter() - start))
        _print(figure="teacher_inference", batch_size=batch,
               network_images_per_second=round(float(np.median(runs))),
               network_runs=[round(r) for r in runs],
               keras_network_images_per_second=round(float(np.median(keras_runs))),
               keras_network_runs=[round(r) for r in keras_runs],
               labeling_path_images_per_second=round(float(np.median(path))),
               labeling_path_runs=[round(r) for r in path],
               threads=tf.config.threading.get_intra_op_parallelism_threads())


def main(argv):
    del argv
    sys.path.insert(0, ROOT)
    if FLAGS.inference:
        inference_speed()
    work = FLAGS.work_dir or tempfile.mkdtemp(prefix="nstudent-pl-scale-")
    source, teacher = os.path.join(work, "source"), os.path.join(work, "teacher")
    if not os.path.exists(os.path.join(source, "part-000.tfrecord")):
        start = time.perf_counter()
        make_source(source, FLAGS.images)
        print(f"made {FLAGS.images} images in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    if not os.path.exists(teacher):
        make_teacher(teacher)
    for n in FLAGS.shards:
        label_set(work, source, teacher, int(n))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
