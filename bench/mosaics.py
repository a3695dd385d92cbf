"""A multi-label image set made offline from the default dataset: 2 x 2 mosaics.

  python bench/mosaics.py --out=runs/mosaics     # then --task=multilabel
      --dataset=folder:runs/mosaics/labeled --labels_file=labels.csv
      --unlabeled_dataset=folder:runs/mosaics/unlabeled

Each of a mosaic's four 28 px cells is empty (--empty_probability) or a
Fashion-MNIST image drawn at random; its labels are the classes present (none when
every cell is empty). Train and unlabeled mosaics use train images, test mosaics
test images, each image once until the pool runs out (then the pool is drawn
again). Written: labeled/{train,test}/<i>.png with labels.csv (`path,class;class`),
unlabeled/<i>.png, unlabeled_labels.csv (the hidden labels, outside the folder the
tools read) and mosaics.json (seed, empty probability, counts, labels per image).
"""

import csv
import json
import os
import shutil

import numpy as np
from absl import app, flags, logging

flags.DEFINE_string("out", "runs/mosaics", "Folder to write (replaced when complete).")
flags.DEFINE_integer("seed", 0, "Seed of the draws.")
flags.DEFINE_float("empty_probability", 0.25, "Chance that a cell is left empty.")
flags.DEFINE_integer("train_mosaics", 2000, "Labeled train mosaics.")
flags.DEFINE_integer("test_mosaics", 2000, "Test mosaics (from test images).")
flags.DEFINE_integer("unlabeled_mosaics", 20000, "Unlabeled mosaics (from train images).")
FLAGS = flags.FLAGS

GRID = 2  # cells per side


class Pool:
    """Draws image indices without replacement; a drained pool is shuffled again."""

    def __init__(self, size, rng):
        self.size, self.rng, self.order = size, rng, np.zeros(0, np.int64)

    def draw(self, n):
        while len(self.order) < n:
            self.order = np.concatenate([self.order, self.rng.permutation(self.size)])
        taken, self.order = self.order[:n], self.order[n:]
        return taken


def make_mosaics(images, labels, count, empty_probability, pool, rng):
    """(uint8 [count, 2h, 2w, c] mosaics, [count, 4] source index per cell or -1 when
    empty); `images` [N, h, w, c]. An empty cell is black, like Fashion-MNIST's
    background."""
    _, h, w, c = images.shape
    filled = rng.random((count, GRID * GRID)) >= empty_probability
    sources = np.full((count, GRID * GRID), -1, np.int64)
    sources[filled] = pool.draw(int(filled.sum()))
    out = np.zeros((count, GRID * h, GRID * w, c), np.uint8)
    for cell in range(GRID * GRID):
        row, col = divmod(cell, GRID)
        has = sources[:, cell] >= 0
        out[has, row * h:(row + 1) * h, col * w:(col + 1) * w] = images[sources[has, cell]]
    return out, sources


def class_lists(sources, labels, names):
    """Each mosaic's classes present, sorted by class index, as names."""
    return [[names[k] for k in sorted({int(labels[s]) for s in row if s >= 0})]
            for row in sources]


def _write(folder, mosaics, classes, labels_csv):
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, image in enumerate(mosaics):
        name = f"{i:06d}.png"
        tf.io.write_file(os.path.join(folder, name), tf.io.encode_png(image))
        rows.append([name, ";".join(classes[i])])
    with open(labels_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)


def main(argv):
    del argv
    from nstudent import data

    if not 0 <= FLAGS.empty_probability < 1:
        raise app.UsageError("--empty_probability must be in [0, 1).")
    info, splits = data.load("fashion_mnist", ("train", "test"), channels=1)
    names = [n.replace("/", "-") for n in info.class_names]  # t-shirt/top: no '/'
    rng = np.random.default_rng(FLAGS.seed)
    tmp = FLAGS.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {"seed": FLAGS.seed, "empty_probability": FLAGS.empty_probability,
               "cell_size": 28, "size": 28 * GRID, "classes": names, "sets": {}}
    plan = (("train", "train", FLAGS.train_mosaics, "labeled/train"),
            ("unlabeled", "train", FLAGS.unlabeled_mosaics, "unlabeled"),
            ("test", "test", FLAGS.test_mosaics, "labeled/test"))
    pools = {s: Pool(len(splits[s].labels), rng) for s in ("train", "test")}
    for what, source, count, folder in plan:
        split = splits[source]
        images = np.concatenate([x for x, _, _ in split.batches(
            np.arange(len(split)), 8192).as_numpy_iterator()])
        mosaics, sources = make_mosaics(images, split.labels, count,
                                        FLAGS.empty_probability, pools[source], rng)
        classes = class_lists(sources, split.labels, names)
        csv_path = (os.path.join(tmp, "unlabeled_labels.csv") if what == "unlabeled"
                    else os.path.join(tmp, folder, "labels.csv"))
        _write(os.path.join(tmp, folder), mosaics, classes, csv_path)
        per_image = np.array([len(c) for c in classes])
        summary["sets"][what] = {
            "mosaics": count, "labels_per_image": round(float(per_image.mean()), 4),
            "without_labels": int((per_image == 0).sum()),
            "positives_per_class": {n: sum(n in c for c in classes) for n in names}}
        logging.info("%s: %d mosaics, %.2f labels per image.", what, count,
                     per_image.mean())
    with open(os.path.join(tmp, "mosaics.json"), "w") as f:
        json.dump(summary, f, indent=1)
    shutil.rmtree(FLAGS.out, ignore_errors=True)
    os.replace(tmp, FLAGS.out)
    print(json.dumps(summary["sets"]))


if __name__ == "__main__":
    app.run(main)
