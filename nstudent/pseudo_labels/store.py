"""What the labeling phase leaves on disk, for the selection phase to read.

  <out>/labels/shard-0000i-of-0000n/settings.json     written first: who labels
  <out>/labels/shard-0000i-of-0000n/chunk-000000.npz  per chunk of the shard:
      index (int64: source index), predicted (int32), confidence (float32: top
      softmax(logits / T)), logits (float32 [rows, classes]), skipped (the
      unreadable files met, str), requested (int64: images asked for)
  <out>/labels/shard-0000i-of-0000n.json              the shard is complete

Every file is written whole, then renamed, so a chunk that exists is complete;
a shard killed mid-way resumes at its first missing chunk. A shard holds every
num_shards-th image of the sorted unlabeled indices, and chunk j its rows
[j * chunk_size, (j + 1) * chunk_size), so the grid depends on neither the
machine nor when a kill came.
"""

import glob
import os
import re
import shutil

import numpy as np

from nstudent.errors import InputError
from nstudent.export.atomic import atomic_path, read_json, write_json

LABELS_DIR = "labels"
_CHUNK = re.compile(r"chunk-(\d{6})\.npz$")


class ShardError(InputError):
    """A pseudo-label folder that is missing shards or holds partial or foreign ones."""


def shard_name(shard_index, num_shards):
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def chunk_rows(requested, j, chunk_size):
    """The source indices of chunk j of a shard whose indices are `requested`."""
    return requested[j * chunk_size:(j + 1) * chunk_size]


def shard_rows(indices, shard_index, num_shards):
    """The source indices of shard `shard_index`: every num_shards-th of the sorted
    indices, so shards see the same class mix and their union is every index once."""
    if not 0 <= shard_index < num_shards:
        raise InputError(f"--shard_index={shard_index} is outside [0, {num_shards}).")
    return np.sort(np.asarray(indices, np.int64))[shard_index::num_shards]


class LabelShard:
    """One shard's chunks on disk."""

    def __init__(self, out_dir, shard_index, num_shards):
        self.index, self.num_shards = shard_index, num_shards
        self.dir = os.path.join(out_dir, LABELS_DIR, shard_name(shard_index, num_shards))
        self.done_path = self.dir + ".json"
        self.settings_path = os.path.join(self.dir, "settings.json")

    def chunk_path(self, j):
        return os.path.join(self.dir, f"chunk-{j:06d}.npz")

    @property
    def complete(self):
        return os.path.exists(self.done_path)

    def finished_chunks(self):
        return sorted(int(_CHUNK.search(p).group(1))
                      for p in glob.glob(os.path.join(self.dir, "chunk-*.npz"))
                      if _CHUNK.search(p))

    def start(self, settings, overwrite=False):
        """Makes the folder ready to (re)label with `settings`; returns the chunks that
        are already finished (resumed) or [] (fresh)."""
        if overwrite:
            shutil.rmtree(self.dir, ignore_errors=True)
            if os.path.exists(self.done_path):
                os.remove(self.done_path)
        if os.path.exists(self.settings_path):
            self.check(settings)
            for stale in glob.glob(os.path.join(self.dir, ".*.tmp-*")):  # a killed write
                shutil.rmtree(stale, ignore_errors=True)
            return self.finished_chunks()
        os.makedirs(self.dir, exist_ok=True)
        write_json(self.settings_path, settings)
        return []

    def check(self, settings):
        """Refuses to resume or reuse a shard labeled with other settings."""
        stored = read_json(self.settings_path)
        if not same_settings(stored, settings):
            raise ShardError(f"{self.dir} was labeled with other settings "
                             f"({settings_difference(stored, settings)}); use another "
                             "--out, or --overwrite to label it again.")

    def write_chunk(self, j, index, logits, predicted, confidence, skipped, requested):
        with atomic_path(self.chunk_path(j), suffix=".npz") as tmp:
            np.savez(tmp, index=np.asarray(index, np.int64),
                     logits=np.asarray(logits, np.float32),
                     predicted=np.asarray(predicted, np.int32),
                     confidence=np.asarray(confidence, np.float32),
                     skipped=np.asarray(skipped, dtype=str), requested=np.int64(requested))

    def read_chunk(self, j, fields):
        with np.load(self.chunk_path(j)) as z:
            return {f: z[f] for f in fields}

    def finish(self, stats):
        write_json(self.done_path, stats)

    def stats(self):
        return read_json(self.done_path)

    def chunks(self, fields=("index", "predicted", "confidence")):
        """Each finished chunk's `fields`, in chunk order (the shard's sorted order)."""
        for j in range(self.stats()["chunks"]):
            yield self.read_chunk(j, fields)


def all_shards(out_dir, num_shards):
    return [LabelShard(out_dir, i, num_shards) for i in range(num_shards)]


# Settings kept as information only: the teacher's path differs where machines mount
# the folder at different paths; its weights digest identifies it.
INFORMATION_KEYS = ("teacher",)


def identity(settings):
    return {k: v for k, v in settings.items() if k not in INFORMATION_KEYS}


def same_settings(stored, wanted):
    return identity(stored) == identity(wanted)


def settings_difference(stored, wanted):
    """The first keys on which two settings differ, with both values; another teacher
    first (by its weights digest)."""
    stored, wanted = identity(stored), identity(wanted)
    keys = sorted((k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k)),
                  key=lambda k: (k != "teacher_digest", k))
    return "; ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in keys[:4])
