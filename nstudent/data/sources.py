"""Where images come from: the embedded default, TFDS, an image folder, TFRecords.

Every source gives, per split, an ordered tf.data.Dataset of (uint8 image
[H, W, C], int64 label) and all its labels as a numpy array, so that a labeled
subset can be chosen without decoding images. Bad input fails here, once, with
a message that names the problem.
"""

import concurrent.futures
import dataclasses
import glob
import gzip
import json
import os
import struct
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
DATASET_INFO_FILE = "dataset_info.json"


class DataError(ValueError):
    """Bad or missing input data; the message says what and where."""


@dataclasses.dataclass
class Split:
    """One split of a dataset, in a fixed order."""

    name: str
    labels: np.ndarray  # int64 [N]
    make_dataset: Callable[[], tf.data.Dataset]  # -> (uint8 HWC image, int64 label)

    def __len__(self):
        return len(self.labels)

    def dataset(self, indices=None):
        """The split's examples, or only those at `indices` (in split order)."""
        ds = self.make_dataset()
        if indices is None:
            return ds
        mask = np.zeros(len(self), bool)
        mask[np.asarray(indices, np.int64)] = True
        mask = tf.constant(mask)
        return ds.enumerate().filter(lambda i, ex: tf.gather(mask, i)).map(
            lambda i, ex: ex)


@dataclasses.dataclass
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    class_names: tuple
    image_size: Optional[int] = None  # native side length where all images share one

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        return d


def check_labels(labels, num_classes, where):
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: label {int(labels[i])} of example {i} is outside the class "
            f"range [0, {num_classes}) ({bad.size} such labels).")


# --- The embedded default: Fashion-MNIST from Debian's dataset-fashion-mnist ---

def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path} is not an IDX file of unsigned bytes.")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {array.size} of {np.prod(dims)} bytes.")
    return array.reshape(dims)


def _in_memory_split(name, images, labels):
    labels = labels.astype(np.int64)
    return Split(name, labels,
                 lambda: tf.data.Dataset.from_tensor_slices((images, labels)))


def fashion_mnist(split_names, directory=DEBIAN_FASHION_MNIST, tfds_data_dir=None):
    """Real Fashion-MNIST from local files: Debian's IDX files, else a prepared TFDS copy."""
    prefixes = {"train": "train", "test": "t10k"}
    if os.path.isdir(directory):
        splits = {}
        for split in split_names:
            if split not in prefixes:
                raise DataError(f"Fashion-MNIST has splits train and test, not {split!r}.")
            images = _read_idx(os.path.join(directory, f"{prefixes[split]}-images-idx3-ubyte.gz"))
            labels = _read_idx(os.path.join(directory, f"{prefixes[split]}-labels-idx1-ubyte.gz"))
            splits[split] = _in_memory_split(split, images[..., None], labels)
        info = DatasetInfo("fashion_mnist", 10, 1, FASHION_MNIST_CLASSES, 28)
        return info, splits
    logging.info("%s not found; trying a prepared TFDS fashion_mnist.", directory)
    try:
        return tfds_dataset("fashion_mnist", split_names, tfds_data_dir, download=False)
    except DataError as e:
        raise DataError(
            "The default dataset Fashion-MNIST is not on this machine. Install Debian's "
            "package (apt-get install dataset-fashion-mnist, files under "
            f"{DEBIAN_FASHION_MNIST}) or use --dataset=tfds:fashion_mnist --tfds_download "
            f"where a download is possible. ({e})") from None


# --- TFDS ---

def tfds_dataset(name, split_names, data_dir=None, download=False):
    import tensorflow_datasets as tfds  # slow import: only when asked for

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        first = str(e).splitlines()[0]
        raise DataError(f"Unknown TFDS dataset {name!r}: {first}") from None
    if not builder.is_prepared():
        if not download:
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; pass "
                "--tfds_download to download it (needs network) or --tfds_data_dir "
                "to point at a prepared copy.")
        builder.download_and_prepare()
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"TFDS dataset {name!r} has no 'image' and 'label' features.")
    num_classes = features["label"].num_classes
    channels = features["image"].shape[-1] or 3
    shape = features["image"].shape
    native = shape[0] if shape[0] and shape[0] == shape[1] else None
    splits = {}
    for split in split_names:
        if split not in builder.info.splits:
            raise DataError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                            f"{', '.join(builder.info.splits)}.")
        label_ds = builder.as_dataset(
            split=split, shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()})
        labels = np.fromiter(label_ds.map(lambda ex: ex["label"]).as_numpy_iterator(),
                             np.int64)
        check_labels(labels, num_classes, f"TFDS {name}:{split}")

        def make(split=split):
            ds = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
            return ds.map(lambda x, y: (x, tf.cast(y, tf.int64)))

        splits[split] = Split(split, labels, make)
    info = DatasetInfo(name, num_classes, channels, tuple(features["label"].names), native)
    return info, splits


# --- Image folders: <root>/<split>/<class>/<image> ---

def _decode(contents, channels):
    image = tf.io.decode_image(contents, channels=0, expand_animations=False)
    tf.debugging.assert_equal(
        tf.shape(image)[-1], channels,
        message=f"an image does not have the expected {channels} channels")
    return tf.ensure_shape(image, [None, None, channels])  # static channels for augmenting


def _scan_image(path):
    """Decodes one file; returns (height, width, channels) or an error string."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        return tuple(int(d) for d in image.shape), None
    except (tf.errors.OpError, ValueError) as e:
        return None, str(e).splitlines()[0][:200]


def image_folder(root, split_names, channels=3, skip_corrupt=False):
    """Decodes every image once up front, so that a bad file is named now."""
    if not os.path.isdir(root):
        raise DataError(f"Image folder {root!r} does not exist.")
    class_names = None
    splits = {}
    sizes = set()
    for split in split_names:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise DataError(f"Image folder {root!r} has no {split!r} subfolder "
                            f"(expected {split_dir}/<class>/<image>).")
        names = tuple(sorted(d for d in os.listdir(split_dir)
                             if os.path.isdir(os.path.join(split_dir, d))))
        if class_names is None:
            if len(names) < 2:
                raise DataError(f"{split_dir} needs one subfolder per class, at least two.")
            class_names = names
        elif names != class_names:
            unknown = sorted(set(names) - set(class_names))
            raise DataError(
                f"{split_dir} has classes that {split_names[0]!r} does not: "
                f"{unknown or 'missing ' + str(sorted(set(class_names) - set(names)))}.")
        paths, labels = [], []
        for label, name in enumerate(class_names):
            for f in sorted(os.listdir(os.path.join(split_dir, name))):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(split_dir, name, f))
                    labels.append(label)
        if not paths:
            raise DataError(f"{split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        logging.info("Checking %d images in %s ...", len(paths), split_dir)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(_scan_image, paths))
        corrupt = [(p, err) for p, (shape, err) in zip(paths, results) if err]
        wrong = [(p, shape[-1]) for p, (shape, err) in zip(paths, results)
                 if shape and shape[-1] != channels]
        if wrong:
            p, c = wrong[0]
            raise DataError(f"{p} has {c} channels, expected {channels} "
                            f"({len(wrong)} such images in {split_dir}; set --channels).")
        if corrupt and not skip_corrupt:
            p, err = corrupt[0]
            raise DataError(f"{p} is not a readable image ({err}); {len(corrupt)} such "
                            f"files in {split_dir}. Pass --skip_corrupt_images to skip them.")
        if corrupt:
            logging.warning("Skipping %d corrupt images in %s (first: %s).",
                            len(corrupt), split_dir, corrupt[0][0])
        keep = [i for i, (shape, err) in enumerate(results) if not err]
        sizes.update(results[i][0][:2] for i in keep)
        split_paths = [paths[i] for i in keep]
        split_labels = np.asarray([labels[i] for i in keep], np.int64)

        def make(split_paths=split_paths, split_labels=split_labels):
            ds = tf.data.Dataset.from_tensor_slices((split_paths, split_labels))
            return ds.map(lambda p, y: (_decode(tf.io.read_file(p), channels), y),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        splits[split] = Split(split, split_labels, make)
    native = next(iter(sizes))[0] if len(sizes) == 1 and len(set(next(iter(sizes)))) == 1 else None
    info = DatasetInfo(os.path.basename(os.path.normpath(root)), len(class_names),
                       channels, class_names, native)
    return info, splits


# --- TFRecords: <dir>/<split>*.tfrecord* with 'image' (encoded) and 'label' ---

TFRECORD_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def tfrecords(directory, split_names, channels=3, num_classes=0):
    """Reads TFRecords; class count from --num_classes, dataset_info.json or the labels."""
    if not os.path.isdir(directory):
        raise DataError(f"TFRecord folder {directory!r} does not exist.")
    info_path = os.path.join(directory, DATASET_INFO_FILE)
    meta = {}
    if os.path.exists(info_path):
        with open(info_path) as f:
            meta = json.load(f)
    splits = {}
    all_labels = []
    for split in split_names:
        files = sorted(glob.glob(os.path.join(directory, f"{split}*.tfrecord*")))
        if not files:
            raise DataError(f"No {split}*.tfrecord* files in {directory}.")

        def make(files=files):
            ds = tf.data.TFRecordDataset(files)
            ds = ds.map(lambda r: tf.io.parse_single_example(r, TFRECORD_FEATURES))
            return ds.map(lambda ex: (_decode(ex["image"], channels), ex["label"]))

        try:
            labels = np.fromiter(
                tf.data.TFRecordDataset(files).map(
                    lambda r: tf.io.parse_single_example(r, TFRECORD_FEATURES)["label"]
                ).as_numpy_iterator(), np.int64)
        except tf.errors.OpError as e:
            raise DataError(f"Cannot read TFRecords {files[0]}...: "
                            f"{str(e).splitlines()[0][:200]}") from None
        all_labels.append(labels)
        splits[split] = Split(split, labels, make)
    num_classes = num_classes or meta.get("num_classes") or int(
        max(l.max() for l in all_labels if l.size) + 1)
    for split, labels in zip(split_names, all_labels):
        check_labels(labels, num_classes, f"{directory} ({split})")
    names = tuple(meta.get("class_names") or (str(i) for i in range(num_classes)))
    return DatasetInfo(os.path.basename(os.path.normpath(directory)), num_classes,
                       channels, names, meta.get("image_size")), splits


def load(spec, split_names=("train", "test"), *, channels=3, num_classes=0,
         tfds_data_dir=None, tfds_download=False, skip_corrupt=False):
    """Opens a dataset named by `spec`.

    fashion_mnist        the embedded default (Debian's files, else a prepared TFDS copy)
    tfds:NAME            any TFDS image classification dataset
    folder:PATH          PATH/<split>/<class>/<image files>
    tfrecord:PATH        PATH/<split>*.tfrecord* with 'image' bytes and 'label' int64
    """
    kind, _, arg = spec.partition(":")
    if spec == "fashion_mnist":
        return fashion_mnist(split_names, tfds_data_dir=tfds_data_dir)
    if kind == "tfds" and arg:
        return tfds_dataset(arg, split_names, tfds_data_dir, tfds_download)
    if kind == "folder" and arg:
        return image_folder(arg, split_names, channels, skip_corrupt)
    if kind == "tfrecord" and arg:
        return tfrecords(arg, split_names, channels, num_classes)
    raise DataError(f"Unknown dataset {spec!r}: use fashion_mnist, tfds:NAME, "
                    "folder:PATH or tfrecord:PATH.")
