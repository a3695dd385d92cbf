"""Saves a grid of augmented images to look at: each row one noise, each column one
image (the original first row): KerasCV's RandAugment in tf.data and DeviceNoise,
at magnitudes 2 and 9, with what a warp exposes filled by --fill_value.

  python bench/augment_grid.py --out=runs/augment_grid.png            # Fashion-MNIST
  python bench/augment_grid.py --folder=photos/labeled/train --channels=3 --size=96

Prints the path of the PNG.
"""

import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

flags.DEFINE_string("out", "runs/augment_grid.png", "PNG to write.")
flags.DEFINE_string("folder", None, "An image folder (PATH/<class>/<images>) instead of "
                    "Fashion-MNIST's test split.")
flags.DEFINE_integer("channels", 1, "Channels of the folder's images.")
flags.DEFINE_integer("size", 0, "Resolution (0: the images' own, 28 for Fashion-MNIST).")
flags.DEFINE_integer("images", 8, "Columns.")
flags.DEFINE_integer("layers", 2, "RandAugment operations per image (N).")
flags.DEFINE_float("fill_value", 128.0, "Grey that fills what the warps expose.")
flags.DEFINE_integer("seed", 0, "Seed of the images' choice and of the noise.")
FLAGS = flags.FLAGS


def _images():
    import numpy as np

    from nstudent import data
    from nstudent.data.pipeline import resize

    if FLAGS.folder:
        root, split = os.path.split(os.path.abspath(FLAGS.folder.rstrip("/")))
        _, splits = data.load(f"folder:{root}", (split,), channels=FLAGS.channels)
        source = splits[split]
    else:
        _, splits = data.load("fashion_mnist", ("test",))
        source = splits["test"]
    rng = np.random.default_rng(FLAGS.seed)
    indices = np.sort(rng.choice(len(source), FLAGS.images, replace=False))
    images = [x for x, _ in source.dataset(indices).as_numpy_iterator()]
    size = FLAGS.size or max(max(x.shape[:2]) for x in images)
    return np.stack([np.asarray(resize(x, size)) for x in images])


def main(argv):
    del argv
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    from nstudent.augment import DeviceNoise, make_cutout, make_randaugment

    keras.utils.set_random_seed(FLAGS.seed)
    images = _images()
    rows = [("original", images.astype(np.float32))]
    for magnitude in (2.0, 5.0, 9.0):
        host = make_randaugment(FLAGS.layers, magnitude, "keras_cv", FLAGS.seed,
                                FLAGS.fill_value)
        rows.append((f"KerasCV M={magnitude:g}", np.stack(
            [keras.ops.convert_to_numpy(host(tf.constant(x, tf.float32))) for x in images])))
        # the reference's op table, then (as its small-image input) Cutout of half the side
        reference = make_randaugment(FLAGS.layers, magnitude, "reference", FLAGS.seed,
                                     FLAGS.fill_value)
        cutout = make_cutout(images.shape[1] // 2, FLAGS.fill_value)
        rows.append((f"reference M={magnitude:g}\n+ Cutout", np.stack(
            [keras.ops.convert_to_numpy(cutout(reference(tf.constant(x, tf.float32))))
             for x in images])))
        device = DeviceNoise(FLAGS.layers, magnitude, random_flip=False, seed=FLAGS.seed,
                             fill_value=FLAGS.fill_value)
        rows.append((f"device M={magnitude:g}",
                     keras.ops.convert_to_numpy(device(images, training=True))))
    grey = images.shape[-1] == 1
    fig, axes = plt.subplots(len(rows), len(images),
                             figsize=(1.2 * len(images), 1.25 * len(rows)), squeeze=False)
    for r, (name, batch) in enumerate(rows):
        for c, image in enumerate(batch):
            ax = axes[r][c]
            shown = np.clip(image, 0, 255).astype(np.uint8)
            ax.imshow(shown[..., 0] if grey else shown, cmap="gray" if grey else None,
                      vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"RandAugment N={FLAGS.layers}, fill {FLAGS.fill_value:g}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    tmp = FLAGS.out + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, FLAGS.out)
    print(FLAGS.out)
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
