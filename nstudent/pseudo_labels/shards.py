"""Pseudo-label shards on disk: TFRecords of (encoded image, soft label, confidence).

Shard i of n is `pseudo-0000i-of-0000n.tfrecord` plus its stats
`pseudo-0000i-of-0000n.json`. The TFRecord is written to a temporary file and
renamed; the stats, which record the TFRecord's size, are written after it.
So a shard is complete exactly when its stats exist and the TFRecord has the
recorded size; anything else is missing or partial and is named as such.
"""

import dataclasses
import glob
import os
import re

import numpy as np
import tensorflow as tf

from nstudent.data.decode import decode
from nstudent.export.atomic import atomic_path, read_json, write_json

_NAME = re.compile(r"pseudo-(\d{5})-of-(\d{5})\.json$")


class ShardError(ValueError):
    """A pseudo-label folder that is missing shards or holds partial ones."""


def shard_name(shard_index, num_shards):
    return f"pseudo-{shard_index:05d}-of-{num_shards:05d}"


def shard_paths(directory, shard_index, num_shards):
    base = os.path.join(directory, shard_name(shard_index, num_shards))
    return base + ".tfrecord", base + ".json"


def _example(image, label, confidence, predicted, index):
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(float_list=tf.train.FloatList(value=label)),
        "confidence": tf.train.Feature(float_list=tf.train.FloatList(value=[confidence])),
        "class": tf.train.Feature(int64_list=tf.train.Int64List(value=[predicted])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shard(directory, shard_index, num_shards, images, labels, confidence,
                source_index, stats):
    """Writes one shard whole: `images` M encoded images, `labels` float [M, classes]."""
    record_path, stats_path = shard_paths(directory, shard_index, num_shards)
    labels = np.asarray(labels, np.float32)
    with atomic_path(record_path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for image, label, conf, index in zip(images, labels, confidence, source_index):
                writer.write(_example(image, label.tolist(), float(conf),
                                      int(label.argmax()), int(index)))
    stats = dict(stats, shard_index=shard_index, num_shards=num_shards,
                 records=int(len(labels)), tfrecord=os.path.basename(record_path),
                 bytes=os.path.getsize(record_path))
    write_json(stats_path, stats)
    return stats


def shard_is_complete(directory, shard_index, num_shards):
    record_path, stats_path = shard_paths(directory, shard_index, num_shards)
    if not (os.path.exists(stats_path) and os.path.exists(record_path)):
        return False
    return os.path.getsize(record_path) == read_json(stats_path)["bytes"]


@dataclasses.dataclass
class PseudoLabels:
    """All shards of a pseudo-label folder, checked complete and consistent."""

    directory: str
    num_classes: int
    channels: int
    class_names: list
    files: list
    records: int
    stats: list  # each shard's stats, in shard order

    def dataset(self):
        """(uint8 image [H, W, C], float32 soft label [classes]) in file order; images
        keep their source's size and encoding and are converted to `channels`."""
        spec = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([self.num_classes], tf.float32)}
        channels = self.channels

        def parse(record):
            ex = tf.io.parse_single_example(record, spec)
            return decode(ex["image"], channels), ex["label"]

        return tf.data.TFRecordDataset(self.files).map(
            parse, num_parallel_calls=tf.data.AUTOTUNE)


def load_pseudo_labels(directory):
    """Opens a pseudo-label folder; a missing or partial shard is an error naming it."""
    if not os.path.isdir(directory):
        raise ShardError(f"No pseudo-label folder at {directory!r}.")
    found = sorted(glob.glob(os.path.join(directory, "pseudo-*-of-*.json")))
    if not found:
        raise ShardError(f"{directory!r} holds no pseudo-label shards "
                         "(pseudo-XXXXX-of-YYYYY.json); run tools/pseudo_label.py.")
    totals = {int(_NAME.search(p).group(2)) for p in found if _NAME.search(p)}
    if len(totals) != 1:
        raise ShardError(f"{directory!r} mixes shards of runs with different "
                         f"--num_shards ({sorted(totals)}).")
    num_shards = totals.pop()
    stats, files = [], []
    for i in range(num_shards):
        record_path, stats_path = shard_paths(directory, i, num_shards)
        if not os.path.exists(stats_path):
            state = "partially written" if os.path.exists(record_path) else "missing"
            raise ShardError(
                f"Shard {i} of {num_shards} in {directory!r} is {state}: run "
                f"tools/pseudo_label.py --shard_index={i} --num_shards={num_shards}.")
        s = read_json(stats_path)
        size = os.path.getsize(record_path) if os.path.exists(record_path) else None
        if size != s["bytes"]:
            raise ShardError(
                f"Shard {i} of {num_shards} in {directory!r}: {os.path.basename(record_path)}"
                f" is {'missing' if size is None else f'{size} bytes'}, its stats say "
                f"{s['bytes']}; run tools/pseudo_label.py --shard_index={i} again.")
        if stats and s["settings"] != stats[0]["settings"]:
            raise ShardError(f"Shard {i} of {num_shards} in {directory!r} was made with "
                             "other settings than shard 0.")
        stats.append(s)
        files.append(record_path)
    records = sum(s["records"] for s in stats)
    if not records:
        raise ShardError(f"The pseudo-label shards in {directory!r} hold no images.")
    first = stats[0]
    return PseudoLabels(directory, first["num_classes"], first["channels"],
                        first["class_names"], files, records, stats)
