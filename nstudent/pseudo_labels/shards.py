"""The pseudo-labeled set on disk: TFRecord shards and their stats, and reading them.

  <out>/pseudo-0000i-of-0000n.tfrecord   selected images of label shard i, in a
                                         seeded random order
  <out>/pseudo-0000i-of-0000n.json       its stats, with its size in bytes
  <out>/stats.json                       the whole set; written last

Each record is a tf.train.Example (schema in docs/noisy-student.md):
  image       bytes    the source's encoded image (a folder's JPEG as it was;
                       PNG for sources that hold pixels)
  label       float[C] soft label softmax(logits / T), or one-hot with --hard_labels
  confidence  float    top probability at temperature T (what selection ranked)
  class       int64    the teacher's predicted class
  index       int64    the image's index in the unlabeled source
  copies      int64    how many times the image is in the set (balancing
                       duplicates a rare class's images); readers expand it
  mask        float[C] multi-label sets only (stats.json "task": "multilabel",
                       "schema": 2): 1 where the teacher was confident (label is
                       then the target), 0 where the entry stays out of the loss;
                       there `confidence` is the image's share of confident entries
                       and `class` its most probable class
A shard is complete when its stats exist and the TFRecord has the recorded size.
"""

import dataclasses
import os

import tensorflow as tf

from nstudent.data.decode import decode
from nstudent.export.atomic import read_json
from nstudent.pseudo_labels.store import ShardError

STATS = "stats.json"


def output_name(shard_index, num_shards):
    return f"pseudo-{shard_index:05d}-of-{num_shards:05d}"


def output_paths(directory, shard_index, num_shards):
    base = os.path.join(directory, output_name(shard_index, num_shards))
    return base + ".tfrecord", base + ".json"


def example(image, label, confidence, predicted, index, copies, mask=None):
    """One serialized record of the schema above (`mask`: multi-label only)."""
    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(float_list=tf.train.FloatList(value=label)),
        "confidence": tf.train.Feature(float_list=tf.train.FloatList(value=[confidence])),
        "class": ints(predicted), "index": ints(index), "copies": ints(copies),
    }
    if mask is not None:
        feature["mask"] = tf.train.Feature(float_list=tf.train.FloatList(value=mask))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def output_is_complete(directory, shard_index, num_shards):
    record_path, stats_path = output_paths(directory, shard_index, num_shards)
    return (os.path.exists(stats_path) and os.path.exists(record_path)
            and os.path.getsize(record_path) == read_json(stats_path)["bytes"])


def parse_records(num_classes, multilabel=False):
    """record -> dict of the schema's features (image still encoded)."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([num_classes], tf.float32),
            "confidence": tf.io.FixedLenFeature([], tf.float32),
            "class": tf.io.FixedLenFeature([], tf.int64),
            "index": tf.io.FixedLenFeature([], tf.int64),
            "copies": tf.io.FixedLenFeature([], tf.int64)}
    if multilabel:
        spec["mask"] = tf.io.FixedLenFeature([num_classes], tf.float32)
    return lambda record: tf.io.parse_single_example(record, spec)


@dataclasses.dataclass
class PseudoLabels:
    """The shards of a pseudo-label folder, checked complete and consistent."""

    directory: str
    num_classes: int
    channels: int
    class_names: list
    files: list
    records: int  # with copies: the images an epoch sees
    stats: dict  # stats.json

    @property
    def settings(self):
        return self.stats["settings"]

    @property
    def multilabel(self):
        return self.stats.get("task") == "multilabel"

    def records_dataset(self):
        """The parsed records, shard files interleaved one record at a time."""
        files = tf.data.Dataset.from_tensor_slices(self.files)
        return files.interleave(
            tf.data.TFRecordDataset, cycle_length=len(self.files), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        ).map(parse_records(self.num_classes, self.multilabel),
              num_parallel_calls=tf.data.AUTOTUNE)

    def dataset(self):
        """(uint8 image [H, W, C], float32 soft label [classes]), each image as often as
        its copies say; images keep their source's size and are converted to `channels`.
        Multi-label: the label is the targets and the mask side by side [2 x classes]."""
        channels = self.channels
        multilabel = self.multilabel

        def repeat(ex):
            image = decode(ex["image"], channels)
            label = tf.concat([ex["label"], ex["mask"]], 0) if multilabel else ex["label"]
            return tf.data.Dataset.from_tensors((image, label)).repeat(ex["copies"])

        ds = self.records_dataset().flat_map(repeat)
        return ds.apply(tf.data.experimental.assert_cardinality(self.records))


def load_pseudo_labels(directory):
    """Opens a pseudo-label folder; a missing or partial shard is an error naming it."""
    if not os.path.isdir(directory):
        raise ShardError(f"No pseudo-label folder at {directory!r}.")
    stats_path = os.path.join(directory, STATS)
    if not os.path.exists(stats_path):
        raise ShardError(
            f"{directory!r} holds no finished pseudo-label set ({STATS} is missing): run "
            f"tools/pseudo_label.py --out={directory} (--phase=select once every shard "
            "is labeled).")
    stats = read_json(stats_path)
    num_shards = stats["settings"]["num_shards"]
    files = []
    for i in range(num_shards):
        record_path, shard_stats = output_paths(directory, i, num_shards)
        if not output_is_complete(directory, i, num_shards):
            size = os.path.getsize(record_path) if os.path.exists(record_path) else None
            raise ShardError(
                f"Shard {i} of {num_shards} in {directory!r}: "
                f"{os.path.basename(record_path)} is "
                f"{'missing' if size is None else f'{size} bytes, not as its stats say'}; "
                f"run tools/pseudo_label.py --phase=select --out={directory} --overwrite.")
        files.append(record_path)
    if not stats["records"]:
        raise ShardError(f"The pseudo-label shards in {directory!r} hold no images.")
    return PseudoLabels(directory, stats["num_classes"], stats["channels"],
                        stats["class_names"], files, stats["records"], stats)


def read_records(directory):
    """Every record of a folder as numpy dicts, in read order (tests, inspection)."""
    pl = load_pseudo_labels(directory)
    return list(pl.records_dataset().as_numpy_iterator())

