"""Where images come from: the embedded default, TFDS, an image folder, TFRecords, and
a separate collection of unlabeled images in any of these forms.

Every source gives, per split, a `Split`: all its labels as a numpy array (-1 where
a source has none) and a way to stream the examples at chosen indices, choosing
before decoding, so a labeled subset or a pseudo-label shard never decodes the
rest. Folders are indexed (paths and classes), not decoded, at start. Bad input
fails here, once, with a message that names the problem.
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

from nstudent.data.config import TASKS
from nstudent.data.decode import (IMAGE_EXTENSIONS, CorruptLog, decode, decode_file,
                                  file_looks_complete, scan)
from nstudent.errors import InputError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot")
DATASET_INFO_FILE = "dataset_info.json"
UNLABELED = -1  # the label of an example whose source has none
SHUFFLE_BEFORE_DECODE = 65536  # records shuffled before decoding (paths: cheap)
AUTOTUNE = tf.data.AUTOTUNE


class DataError(InputError):
    """Bad or missing input data; the message says what and where."""


@dataclasses.dataclass
class Split:
    """One split of a source, in a fixed order.

    `read(indices)` streams (payload, index) for sorted indices without decoding;
    `decode(payload)` -> (uint8 image [H, W, C], ok). `to_bytes(payload)` gives the
    source's encoded bytes where it has them (None: decoded pixels only).
    """

    name: str
    labels: np.ndarray  # int64 [N] (multi-label: multi-hot [N, C]); UNLABELED: no label
    read: Callable
    decode: Callable
    to_bytes: Optional[Callable] = None
    corrupt: Optional[CorruptLog] = None  # files skipped while streaming
    pixels: bool = False  # read() yields decoded images that cannot fail (arrays)
    paths: Optional[np.ndarray] = None  # str [N]: each example's file (folders only)

    def __len__(self):
        return len(self.labels)

    @property
    def has_labels(self):
        return bool(len(self.labels)) and bool(np.all(self.labels >= 0))

    def dataset(self, indices=None, with_index=False, encoded=False, shuffle_seed=None):
        """(uint8 image, int64 label[, int64 index]) at `indices` (all: None), in split
        order; unreadable files skipped when the source was opened to skip them.
        `encoded`: the source's encoded bytes as stored, neither decoded nor checked
        (for rows already read once, as the labeler writes the images it labeled).
        `shuffle_seed`: shuffled anew every pass, before decoding (a folder shuffles
        its paths), so training needs no large buffer of decoded images."""
        indices = (np.arange(len(self), dtype=np.int64) if indices is None
                   else np.sort(np.asarray(indices, np.int64)))
        labels = tf.constant(self.labels, tf.int64)

        def decode(payload, index):
            if encoded:
                return self.to_bytes(payload), tf.constant(True), index
            image, ok = self.decode(payload)
            return image, ok, index

        ds = self.read(indices)
        if shuffle_seed is not None:
            ds = ds.shuffle(min(len(indices), SHUFFLE_BEFORE_DECODE), seed=shuffle_seed,
                            reshuffle_each_iteration=True)
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.filter(lambda image, ok, index: ok)
        if self.corrupt is None:  # nothing is skipped: the length is known (Keras uses it)
            ds = ds.apply(tf.data.experimental.assert_cardinality(len(indices)))
        if with_index:
            ds = ds.map(lambda image, ok, i: (image, tf.gather(labels, i), i))
        else:
            ds = ds.map(lambda image, ok, i: (image, tf.gather(labels, i)))
        return ds.with_options(_FUSED)

    def batches(self, indices, batch_size, prepare=None, shape=None):
        """Batches of (uint8 images, int64 labels, int64 indices) at `indices`, in split
        order, with no tf.data work per image (pseudo-labeling's fast path). Arrays
        are sliced a batch at a time. Other sources decode a batch at a time, each
        image then `prepare`d to `shape` [H, W, C]; unreadable ones are dropped
        (skip mode) or raise, as in `dataset`."""
        indices = np.sort(np.asarray(indices, np.int64))
        labels = tf.constant(self.labels, tf.int64)
        if self.pixels:
            return self.read(indices).batch(batch_size).map(
                lambda x, i: (x, tf.gather(labels, i), i))
        spec = (tf.TensorSpec(shape, tf.uint8), tf.TensorSpec([], tf.bool))

        def decode_batch(payloads, index):
            def one(payload):
                image, ok = self.decode(payload)
                return prepare(image), ok

            images, ok = tf.map_fn(one, payloads, fn_output_signature=spec)
            index = tf.boolean_mask(index, ok)
            return tf.boolean_mask(images, ok), tf.gather(labels, index), index

        return self.read(indices).batch(batch_size).map(
            decode_batch, num_parallel_calls=AUTOTUNE, deterministic=True)

    def skipped_files(self):
        return self.corrupt.paths if self.corrupt else []


@dataclasses.dataclass
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    class_names: tuple
    image_size: Optional[int] = None  # native side length where all images share one
    task: str = "multiclass"  # multilabel: labels are multi-hot rows [N, classes]
    dropped_classes: tuple = ()  # class folders without training images (--drop_empty_classes)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["dropped_classes"] = list(self.dropped_classes)
        return d


def check_labels(labels, num_classes, where):
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{where}: label {int(labels[i])} of example {i} is outside the class "
            f"range [0, {num_classes}) ({bad.size} such labels).")


_FUSED = tf.data.Options()  # decode, filter and relabel run as one function per image
_FUSED.experimental_optimization.map_and_filter_fusion = True
_FUSED.experimental_optimization.map_fusion = True


SELECT_BLOCK = 1024  # records tested (and parsed) together


def _mask_filter(ds, indices, total, parse=None):
    """Keeps the elements of an ordered stream at `indices` (sorted), as (x, index).
    Works a block of records at a time, `parse` (a batched parser) included: per
    record, filtering and parsing cost ~30 and ~40 us, 5-10x more than per block."""
    mask = np.zeros(total, bool)
    mask[indices] = True
    mask = tf.constant(mask)

    def select(block, x):
        position = block * SELECT_BLOCK + tf.range(tf.shape(x)[0], dtype=tf.int64)
        keep = tf.gather(mask, position)
        x = tf.boolean_mask(x, keep)
        return (parse(x) if parse else x), tf.boolean_mask(position, keep)

    return ds.batch(SELECT_BLOCK).enumerate().map(select).unbatch()


def _decoder(channels):
    """Encoded bytes stored in records -> (image, ok); converted to `channels`."""
    return lambda contents: (decode(contents, channels), tf.constant(True))


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


def in_memory_split(name, images, labels):
    """A split held as a uint8 array [N, H, W, C]; selection indexes the array."""
    labels = np.asarray(labels).astype(np.int64)
    return Split(name, labels,
                 read=lambda idx: tf.data.Dataset.from_tensor_slices((images[idx], idx)),
                 decode=lambda image: (image, tf.constant(True)), pixels=True)


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
            splits[split] = in_memory_split(split, images[..., None], labels)
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

def _tfds_builder(name, data_dir, download):
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
    if "image" not in builder.info.features:
        raise DataError(f"TFDS dataset {name!r} has no 'image' feature.")
    return builder


def _tfds_split(builder, split, channels, labels):
    import tensorflow_datasets as tfds

    if split not in builder.info.splits:
        raise DataError(f"TFDS dataset {builder.name!r} has no split {split!r}; it has "
                        f"{', '.join(builder.info.splits)}.")

    def records():
        return builder.as_dataset(split=split, shuffle_files=False,
                                  decoders={"image": tfds.decode.SkipDecoding()})

    if labels is None:  # an unlabeled source: the count only
        labels = np.full(builder.info.splits[split].num_examples, UNLABELED, np.int64)
    total = len(labels)
    return Split(split, labels,
                 read=lambda idx: _mask_filter(records().map(lambda ex: ex["image"]), idx,
                                               total),
                 decode=_decoder(channels), to_bytes=lambda b: b)


def tfds_dataset(name, split_names, data_dir=None, download=False):
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir, download)
    features = builder.info.features
    if "label" not in features:
        raise DataError(f"TFDS dataset {name!r} has no 'label' feature.")
    num_classes = features["label"].num_classes
    channels = features["image"].shape[-1] or 3
    shape = features["image"].shape
    native = shape[0] if shape[0] and shape[0] == shape[1] else None
    splits = {}
    for split in split_names:
        if split not in builder.info.splits:
            raise DataError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                            f"{', '.join(builder.info.splits)}.")
        label_ds = builder.as_dataset(  # labels only, read once
            split=split, shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()})
        labels = np.fromiter(label_ds.map(lambda ex: ex["label"]).as_numpy_iterator(),
                             np.int64)
        check_labels(labels, num_classes, f"TFDS {name}:{split}")
        splits[split] = _tfds_split(builder, split, channels, labels)
    info = DatasetInfo(name, num_classes, channels, tuple(features["label"].names), native)
    return info, splits


# --- Image folders: <root>/<split>/<class>/<image>, indexed not decoded ---

def list_images(directory):
    """Image files under `directory` (recursive, sorted) and the other files found."""
    images, others = [], []
    for parent, dirs, files in os.walk(directory):
        dirs.sort()
        for f in sorted(files):
            if f.startswith("."):
                continue  # .DS_Store and friends
            path = os.path.join(parent, f)
            (images if f.lower().endswith(IMAGE_EXTENSIONS) else others).append(path)
    return images, others


def _report_others(others, where):
    if others:
        exts = sorted({os.path.splitext(p)[1].lower() or "(none)" for p in others})
        logging.warning("%s: %d files with other extensions than %s were not read "
                        "(extensions %s; first: %s).", where, len(others),
                        ", ".join(IMAGE_EXTENSIONS), ", ".join(exts[:8]), others[0])


def _verify(paths, channels, skip_corrupt, where):
    """--verify_images: decodes every file now; returns the readable ones' positions."""
    logging.info("Verifying %d images in %s ...", len(paths), where)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: scan(p, channels), paths))
    corrupt = [(p, err) for p, (_, err) in zip(paths, results) if err]
    if corrupt and not skip_corrupt:
        p, err = corrupt[0]
        raise DataError(f"{p} is not a readable image ({err}); {len(corrupt)} such "
                        f"files in {where}. Pass --skip_corrupt_images to skip them.")
    if corrupt:
        logging.warning("Skipping %d corrupt images in %s (first: %s).", len(corrupt),
                        where, corrupt[0][0])
    return [i for i, (_, err) in enumerate(results) if not err]


# Folders up to this many files have every file's header and trailer checked before
# any work (5.3 s for 50,000 JPEGs of 24-96 px on 2 cores: bench/folder_input.py); larger
# ones while streaming. With --skip_corrupt_images the streaming pass skips and counts.
HEADER_CHECK_MAX_FILES = 50_000


def check_headers(paths, where):
    """Every file's header and trailer (file_looks_complete); the first broken one named."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ok = list(pool.map(file_looks_complete, paths))
    bad = [p for p, good in zip(paths, ok) if not good]
    if bad:
        raise DataError(f"{bad[0]} is not a readable image (truncated, empty or not an "
                        f"image: header/trailer check); {len(bad)} such files in {where}. "
                        "Pass --skip_corrupt_images to skip them (they are counted and "
                        "logged).")


def folder_split(name, paths, labels, channels, skip_corrupt=False, verify=False,
                 where=""):
    """A split of image files; decoded while streaming, or all now with `verify`."""
    if verify:
        keep = _verify(paths, channels, skip_corrupt, where)
        paths, labels = [paths[i] for i in keep], np.asarray(labels)[keep]
    elif not skip_corrupt and len(paths) <= HEADER_CHECK_MAX_FILES:
        check_headers(paths, where)
    names = np.asarray(paths, dtype=str)
    paths = np.asarray(paths, dtype=object).astype(bytes)
    log = CorruptLog() if skip_corrupt else None
    return Split(name, np.asarray(labels, np.int64),
                 read=lambda idx: tf.data.Dataset.from_tensor_slices((paths[idx], idx)),
                 decode=lambda path: decode_file(path, channels, log),
                 to_bytes=tf.io.read_file, corrupt=log, paths=names)


def image_folder(root, split_names, channels=3, skip_corrupt=False, verify=False,
                 drop_empty=False):
    """Indexes root/<split>/<class>/ (images in any subfolder of a class folder). A class
    folder with no image in the first split is refused, or with `drop_empty` left out of
    every split (its images in the other splits too) and recorded in the info."""
    if not os.path.isdir(root):
        raise DataError(f"Image folder {root!r} does not exist.")
    class_names = None
    dropped = ()
    splits = {}
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
            missing = sorted(set(class_names) - set(names))
            raise DataError(
                f"{split_dir} has classes that {split_names[0]!r} does not: {unknown}."
                if unknown else f"{split_dir} lacks the class folder(s) {missing} that "
                f"{split_names[0]!r} has: every split needs the same classes.")
        listed = {name: list_images(os.path.join(split_dir, name)) for name in class_names}
        empty = [name for name in class_names if not listed[name][0]]
        if empty and split == split_names[0]:
            # a class with no training image would be a class the model never learns
            if not drop_empty:
                raise DataError(f"{split_dir}: the class folder(s) {empty} hold no images "
                                f"({', '.join(IMAGE_EXTENSIONS)}); add images, remove the "
                                "folder(s) from every split, or pass --drop_empty_classes.")
            if len(class_names) - len(empty) < 2:
                raise DataError(f"{split_dir}: only {len(class_names) - len(empty)} class "
                                "folder(s) hold images; at least two are needed.")
            dropped = tuple(empty)
            logging.warning("--drop_empty_classes: %s hold(s) no images in %s; left out of "
                            "every split.", list(dropped), split_dir)
        paths, labels, others, left_out = [], [], [], 0
        kept = [name for name in class_names if name not in dropped]
        for name in class_names:
            found, other = listed[name]
            others += other
            if name in dropped:
                left_out += len(found)
                continue
            paths += found
            labels += [kept.index(name)] * len(found)
        if left_out:
            logging.warning("%s: %d images of the dropped class(es) %s left out.",
                            split_dir, left_out, list(dropped))
        _report_others(others, split_dir)
        if not paths:
            raise DataError(f"{split_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        logging.info("%s: %d images in %d classes (decoded while streaming).", split_dir,
                     len(paths), len(class_names) - len(dropped))
        splits[split] = folder_split(split, paths, labels, channels, skip_corrupt, verify,
                                     split_dir)
    kept = tuple(name for name in class_names if name not in dropped)
    info = DatasetInfo(os.path.basename(os.path.normpath(root)), len(kept), channels, kept,
                       dropped_classes=dropped)
    return info, splits


# --- Multi-label folders: <root>/<split>/ with a labels file per split ---

LABELS_SEPARATOR = ";"


def read_labels_file(split_dir, labels_file):
    """(paths, class lists) from <split_dir>/<labels_file>: CSV rows `path,classes`,
    the path relative to the split folder, the classes separated by ';' (empty: no
    class present); an optional first row `path,labels` is a header."""
    import csv

    path = os.path.join(split_dir, labels_file)
    if not os.path.isfile(path):
        raise DataError(f"No labels file {path} (--labels_file names it inside every "
                        "split folder).")
    paths, classes = [], []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            if not row or (line == 1 and [c.strip().lower() for c in row] == ["path",
                                                                              "labels"]):
                continue
            if len(row) > 2:
                raise DataError(f"{path}, line {line}: expected `path,class;class`, got "
                                f"{len(row)} fields (separate classes with ';').")
            image = os.path.join(split_dir, row[0].strip())
            if not os.path.isfile(image):
                raise DataError(f"{path}, line {line}: no image {image}.")
            names = [c.strip() for c in (row[1] if len(row) > 1 else "").split(
                LABELS_SEPARATOR) if c.strip()]
            paths.append(image)
            classes.append(names)
    if not paths:
        raise DataError(f"{path} lists no images.")
    return paths, classes


def multi_hot(class_lists, class_names, where):
    """int64 [N, C] rows from lists of class names; an unknown name fails, named."""
    index = {name: c for c, name in enumerate(class_names)}
    labels = np.zeros((len(class_lists), len(class_names)), np.int64)
    for i, names in enumerate(class_lists):
        unknown = [n for n in names if n not in index]
        if unknown:
            raise DataError(f"{where}: image {i} names unknown class(es) {unknown}; the "
                            f"classes are {list(class_names)}.")
        labels[i, [index[n] for n in names]] = 1
    return labels


def multilabel_folder(root, split_names, labels_file, channels=3, skip_corrupt=False,
                      verify=False):
    """Indexes root/<split>/ from each split's labels file; the classes are those the
    first split names (sorted); another split naming one it lacks fails."""
    if not os.path.isdir(root):
        raise DataError(f"Image folder {root!r} does not exist.")
    class_names, splits = None, {}
    for split in split_names:
        split_dir = os.path.join(root, split)
        paths, class_lists = read_labels_file(split_dir, labels_file)
        if class_names is None:
            class_names = tuple(sorted({n for names in class_lists for n in names}))
            if len(class_names) < 2:
                raise DataError(f"{split_dir}/{labels_file} names {len(class_names)} "
                                "class(es); a multi-label set needs at least two.")
        labels = multi_hot(class_lists, class_names, os.path.join(split_dir, labels_file))
        logging.info("%s: %d images, %d classes, %.2f labels per image (decoded while "
                     "streaming).", split_dir, len(paths), len(class_names),
                     labels.sum() / len(labels))
        splits[split] = folder_split(split, paths, labels, channels, skip_corrupt, verify,
                                     split_dir)
    info = DatasetInfo(os.path.basename(os.path.normpath(root)), len(class_names),
                       channels, class_names, task="multilabel")
    return info, splits


# --- TFRecords: <dir>/<split>*.tfrecord* with 'image' (encoded) and 'label' ---

IMAGE_FEATURE = {"image": tf.io.FixedLenFeature([], tf.string)}
LABEL_FEATURE = {"label": tf.io.FixedLenFeature([], tf.int64)}
LABELS_FEATURE = {"labels": tf.io.VarLenFeature(tf.int64)}  # multi-label: class indices


def _first_example_keys(files):
    for record in tf.data.TFRecordDataset(files[:1]).take(1):
        return set(tf.train.Example.FromString(record.numpy()).features.feature)
    return set()


def _tfrecord_split(name, files, channels, labels):
    total = len(labels)

    def read(idx):
        return _mask_filter(tf.data.TFRecordDataset(files), idx, total,
                            parse=lambda r: tf.io.parse_example(r, IMAGE_FEATURE)["image"])

    return Split(name, labels, read=read, decode=_decoder(channels), to_bytes=lambda b: b)


def _read_records(files, what):
    try:
        return what()
    except tf.errors.OpError as e:
        raise DataError(f"Cannot read TFRecords {files[0]}...: "
                        f"{str(e).splitlines()[0][:200]}") from None


def _read_label_lists(files):
    """Each record's `labels` (int64 class indices, any count) as a list of arrays."""
    parsed = tf.data.TFRecordDataset(files).map(
        lambda r: tf.sparse.to_dense(tf.io.parse_single_example(r, LABELS_FEATURE)["labels"]))
    return list(parsed.as_numpy_iterator())


def tfrecords(directory, split_names, channels=3, num_classes=0, task="multiclass"):
    """Reads TFRecords; class count from --num_classes, dataset_info.json or the labels.
    Multi-label records carry an int64 list `labels` (the classes present) instead of
    `label`."""
    if not os.path.isdir(directory):
        raise DataError(f"TFRecord folder {directory!r} does not exist.")
    info_path = os.path.join(directory, DATASET_INFO_FILE)
    meta = {}
    if os.path.exists(info_path):
        with open(info_path) as f:
            meta = json.load(f)
    multilabel = task == "multilabel"
    files_of, all_labels = {}, []
    for split in split_names:
        files = sorted(glob.glob(os.path.join(directory, f"{split}*.tfrecord*")))
        if not files:
            raise DataError(f"No {split}*.tfrecord* files in {directory}.")
        if multilabel:
            keys = _read_records(files, lambda: _first_example_keys(files))
            if "labels" not in keys:
                raise DataError(f"{files[0]}: a multi-label run needs an int64 list "
                                f"feature 'labels'; the records have "
                                f"{', '.join(sorted(keys)) or 'none'}.")
            labels = _read_records(files, lambda: _read_label_lists(files))
        else:
            labels = _read_records(files, lambda: np.fromiter(  # labels only, read once
                tf.data.TFRecordDataset(files).map(
                    lambda r: tf.io.parse_single_example(r, LABEL_FEATURE)["label"]
                ).as_numpy_iterator(), np.int64))
        files_of[split] = files
        all_labels.append(labels)
    flat = [(np.concatenate(l) if l else np.zeros(0, np.int64)) if multilabel else l
            for l in all_labels]
    num_classes = num_classes or meta.get("num_classes") or int(
        max((l.max() for l in flat if l.size), default=0) + 1)
    for split, labels in zip(split_names, flat):
        check_labels(labels, num_classes, f"{directory} ({split})")
    names = tuple(meta.get("class_names") or (str(i) for i in range(num_classes)))
    splits = {}
    for split, labels in zip(split_names, all_labels):
        if multilabel:
            labels = multi_hot([[names[int(c)] for c in row] for row in labels], names,
                               f"{directory} ({split})")
        splits[split] = _tfrecord_split(split, files_of[split], channels, labels)
    return DatasetInfo(os.path.basename(os.path.normpath(directory)), num_classes,
                       channels, names, meta.get("image_size"), task), splits


def load(spec, split_names=("train", "test"), *, channels=3, num_classes=0,
         tfds_data_dir=None, tfds_download=False, skip_corrupt=False, verify=False,
         task="multiclass", labels_file="", drop_empty_classes=False):
    """Opens a labeled dataset named by `spec`.

    fashion_mnist        the embedded default (Debian's files, else a prepared TFDS copy)
    tfds:NAME            any TFDS image classification dataset
    folder:PATH          PATH/<split>/<class>/<image files>; multi-label:
                         PATH/<split>/<labels_file> naming each image's classes
    tfrecord:PATH        PATH/<split>*.tfrecord* with 'image' bytes and 'label' int64
                         (multi-label: an int64 list 'labels')
    """
    kind, _, arg = spec.partition(":")
    if task not in TASKS:
        raise DataError(f"--task must be one of {', '.join(TASKS)}, got {task!r}.")
    if labels_file and task != "multilabel":
        raise DataError("--labels_file is for --task=multilabel.")
    if drop_empty_classes and (kind != "folder" or task != "multiclass"):
        raise DataError("--drop_empty_classes is for a single-label image folder "
                        f"(folder:PATH), not {spec!r} with --task={task}: other sources "
                        "have no class folders to drop.")
    if task == "multilabel":
        if kind == "folder" and arg:
            if not labels_file:
                raise DataError("--task=multilabel on a folder needs --labels_file (each "
                                "split folder's CSV of `path,class;class`).")
            return multilabel_folder(arg, split_names, labels_file, channels,
                                     skip_corrupt, verify)
        if kind == "tfrecord" and arg:
            return tfrecords(arg, split_names, channels, num_classes, task)
        raise DataError(f"--task=multilabel reads folder:PATH with --labels_file or "
                        f"tfrecord:PATH with a 'labels' list, not {spec!r}.")
    if spec == "fashion_mnist":
        return fashion_mnist(split_names, tfds_data_dir=tfds_data_dir)
    if kind == "tfds" and arg:
        return tfds_dataset(arg, split_names, tfds_data_dir, tfds_download)
    if kind == "folder" and arg:
        return image_folder(arg, split_names, channels, skip_corrupt, verify,
                            drop_empty_classes)
    if kind == "tfrecord" and arg:
        return tfrecords(arg, split_names, channels, num_classes)
    raise DataError(f"Unknown dataset {spec!r}: use fashion_mnist, tfds:NAME, "
                    "folder:PATH or tfrecord:PATH.")


# --- A separate collection of unlabeled images ---

UNLABELED_TFDS_SPLITS = ("unlabelled", "unlabeled")


def load_unlabeled(spec, channels, *, tfds_data_dir=None, tfds_download=False,
                   skip_corrupt=False, verify=False, flag="--unlabeled_dataset"):
    """Opens --unlabeled_dataset as one Split of UNLABELED examples, decoded to
    `channels` (the labeled data's) whatever the files hold.

    folder:PATH          every image under PATH (subfolders are not labels)
    tfds:NAME[:SPLIT]    a TFDS split (default: its unlabelled split, else train)
    tfrecord:PATH        PATH/*.tfrecord* (or a glob) with an encoded 'image'
    """
    kind, _, arg = spec.partition(":")
    if kind == "folder" and arg:
        if not os.path.isdir(arg):
            raise DataError(f"Unlabeled image folder {arg!r} does not exist.")
        paths, others = list_images(arg)
        _report_others(others, arg)
        if not paths:
            raise DataError(f"Unlabeled image folder {arg!r} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}).")
        logging.info("%s: %d unlabeled images (decoded while streaming).", arg, len(paths))
        return folder_split("unlabeled", paths, np.full(len(paths), UNLABELED, np.int64),
                            channels, skip_corrupt, verify, arg)
    if kind == "tfds" and arg:
        name, _, split = arg.partition(":")
        builder = _tfds_builder(name, tfds_data_dir, tfds_download)
        if not split:
            split = next((s for s in UNLABELED_TFDS_SPLITS if s in builder.info.splits),
                         "train")
        split_obj = _tfds_split(builder, split, channels, None)
        if not len(split_obj):
            raise DataError(f"TFDS {name}:{split} holds no images.")
        return split_obj
    if kind == "tfrecord" and arg:
        pattern = (os.path.join(arg, "*.tfrecord*") if os.path.isdir(arg) else arg)
        files = sorted(glob.glob(pattern))
        if not files:
            raise DataError(f"No TFRecord files at {pattern!r} for {flag}.")
        keys = _read_records(files, lambda: _first_example_keys(files))
        if "image" not in keys:
            raise DataError(f"{files[0]}: the records have no 'image' feature (they have "
                            f"{', '.join(sorted(keys)) or 'none'}).")
        count = _read_records(files, lambda: int(
            tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda n, _: n + 1)))
        if not count:
            raise DataError(f"The TFRecords at {pattern!r} hold no records.")
        return _tfrecord_split("unlabeled", files, channels,
                               np.full(count, UNLABELED, np.int64))
    raise DataError(f"Unknown {flag} {spec!r}: use folder:PATH, "
                    "tfds:NAME[:SPLIT] or tfrecord:PATH.")
