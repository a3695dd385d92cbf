"""An image folder at scale: start-up, decoding speed and memory of the folder source.

  python bench/folder_input.py                      # 100,000 JPEGs, then the figures
  python bench/folder_input.py --repo=/path/to/old  # the same figures for another checkout

Builds (once, reused) <folder>/{train,test}/<class>/*.jpg of --images JPEGs whose
sides vary between --min_side and --max_side, some grey. Then, in a fresh process
that imports nstudent from --repo, measures: seconds from opening the dataset to
the first training batch (a labeled teacher's input pipeline with RandAugment),
images/s of the decoding pipeline (decode, resize, batch) over --decode_images
images, the seconds the header check before work takes over as many files as it
checks (data/sources.py HEADER_CHECK_MAX_FILES), and the process's peak RSS. Prints one JSON line.
"""

import concurrent.futures
import io
import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

from common import ROOT, machine  # bench/common.py; nstudent comes from --repo

flags.DEFINE_string("folder", "/tmp/nstudent-bench-folder", "Where the synthetic folder "
                    "is built (reused when complete).")
flags.DEFINE_integer("images", 100_000, "Training images in the folder.")
flags.DEFINE_integer("classes", 10, "Classes.")
flags.DEFINE_integer("min_side", 24, "Smallest image side.")
flags.DEFINE_integer("max_side", 96, "Largest image side.")
flags.DEFINE_integer("grey_every", 0, "Every n-th image is a grey JPEG (0: none; the "
                     "folder source before 2026-11-23 refused them in a colour folder).")
flags.DEFINE_integer("decode_images", 20_000, "Images the decoding figure streams.")
flags.DEFINE_integer("image_size", 32, "Training resolution.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_string("repo", ROOT, "The nstudent checkout to measure.")
flags.DEFINE_bool("measure", False, "Internal: measure in this process.")
FLAGS = flags.FLAGS


def _jpeg(args):
    import numpy as np
    from PIL import Image

    path, seed, min_side, max_side, grey_every = args
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
    ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(60, 200, 3)
    pixels = np.clip(ramp + rng.normal(40, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if grey_every and seed % grey_every == 0:
        image = image.convert("L")  # some grey JPEGs, as in a real collection
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def build_folder():
    marker = os.path.join(FLAGS.folder, f"complete-{FLAGS.images}-grey{FLAGS.grey_every}")
    if os.path.exists(marker):
        return
    start = time.time()
    jobs = []
    for split, count in (("train", FLAGS.images), ("test", max(FLAGS.images // 100, 100))):
        for c in range(FLAGS.classes):
            os.makedirs(os.path.join(FLAGS.folder, split, f"class{c:02d}"), exist_ok=True)
        for i in range(count):
            c = i % FLAGS.classes
            jobs.append((os.path.join(FLAGS.folder, split, f"class{c:02d}", f"{i:07d}.jpg"),
                         i if split == "train" else 10 ** 8 + i, FLAGS.min_side,
                         FLAGS.max_side, FLAGS.grey_every))
    with concurrent.futures.ProcessPoolExecutor() as pool:
        for done, _ in enumerate(pool.map(_jpeg, jobs, chunksize=512), 1):
            if done % 20000 == 0:
                print(f"built {done}/{len(jobs)} JPEGs", file=sys.stderr, flush=True)
    open(marker, "w").close()
    print(f"built {len(jobs)} JPEGs in {time.time() - start:.0f} s", file=sys.stderr)


def measure():
    """Runs in a fresh process: the figures for the checkout on sys.path."""
    import inspect

    import tensorflow as tf

    from nstudent import data

    start = time.perf_counter()
    info, splits = data.load(f"folder:{FLAGS.folder}", ("train", "test"), channels=3)
    opened = time.perf_counter() - start
    split = splits["train"]
    cache = "none" if hasattr(data, "CACHES") else False  # this checkout's --cache
    config = data.InputConfig(image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
                              randaugment_magnitude=5, cache=cache)
    if "shuffled" in inspect.signature(data.train_dataset).parameters:  # as the teacher
        batches = data.train_dataset(split.dataset(shuffle_seed=0), info.num_classes,
                                     config, seed=0, num_examples=len(split), shuffled=True)
    else:
        batches = data.train_dataset(split.dataset(), info.num_classes, config, seed=0)
    next(iter(batches))
    first_batch = time.perf_counter() - start

    header_check = {}
    from nstudent.data import sources
    if hasattr(sources, "check_headers"):  # the check before work of small folders
        paths = list(split.paths[:sources.HEADER_CHECK_MAX_FILES])
        begin = time.perf_counter()
        sources.check_headers(paths, FLAGS.folder)
        header_check = {"header_check_files": len(paths),
                        "header_check_seconds": round(time.perf_counter() - begin, 2)}

    n = min(FLAGS.decode_images, len(split))
    stream = split.dataset(list(range(n))).map(
        lambda x, y: data.resize(x, FLAGS.image_size),
        num_parallel_calls=tf.data.AUTOTUNE).batch(256).prefetch(tf.data.AUTOTUNE)
    begin, seen = time.perf_counter(), 0
    for images in stream:
        seen += int(images.shape[0])
    decode_seconds = time.perf_counter() - begin
    print(json.dumps({
        "figure": "folder_source", "images": len(split), "seconds_to_open": round(opened, 2),
        "seconds_to_first_batch": round(first_batch, 2),
        "decode_images_per_second": round(seen / decode_seconds, 1),
        "decoded": seen, **header_check, "peak_rss_mib": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "repo": FLAGS.repo, **machine()}))


def main(argv):
    del argv
    if FLAGS.measure:
        return measure()
    build_folder()
    env = dict(os.environ, PYTHONPATH=FLAGS.repo, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--measure",
                    *[a for a in sys.argv[1:] if not a.startswith("--measure")]],
                   check=True, env=env, cwd=FLAGS.repo)


if __name__ == "__main__":
    app.run(main)
