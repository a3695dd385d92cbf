"""From teacher outputs to the pseudo-labeled set: soften, filter, balance.

Balancing is global: K images per class over the whole unlabeled set, however
many shards labeled it. Images rank within their predicted class by confidence,
ties by source index, so the choice is a function of the images alone, never of
how they were sharded. A class with at least K candidates keeps its K best; a
class with n < K keeps all, each K // n times, and its K % n best once more.

The rank cut-offs come from a few streaming passes over (class, confidence,
index) — a radix select on a 64-bit key, 12 bits a pass — so memory holds one
chunk and a [classes, 4096] histogram, not the set. Pure numpy.
"""

import dataclasses

import numpy as np

from nstudent import ranges
from nstudent.errors import InputError

DIGIT_BITS = 12
WARN_COPIES = 50  # the selection warns when balancing repeats an image more often
_INDEX_MASK = np.uint64(0xFFFFFFFF)


def soften(logits, temperature=1.0, hard=False):
    """Softmax of logits / temperature; one-hot of the argmax when `hard`."""
    ranges.check("temperature", temperature)
    logits = np.asarray(logits, np.float64) / temperature
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return harden(probs) if hard else probs


def harden(probabilities):
    """One-hot float32 of each row's argmax: hard pseudo-labels."""
    probabilities = np.asarray(probabilities)
    return np.eye(probabilities.shape[-1], dtype=np.float32)[np.argmax(probabilities, axis=-1)]


def passes(confidence, predicted, min_confidence):
    """confidence >= the cut-off: one for every class, or per class (an array indexed
    by the predicted class: --min_precision's cut-offs)."""
    threshold = np.asarray(min_confidence, np.float64)
    if threshold.ndim:
        threshold = threshold[np.asarray(predicted, np.int64)]
    return np.asarray(confidence) >= threshold


def rank_key(confidence, index):
    """uint64 keys whose descending order is confidence descending, index ascending."""
    confidence = np.asarray(confidence, np.float32)
    index = np.asarray(index, np.int64)
    if index.size and index.max() > 0xFFFFFFFF:
        raise InputError("Source indices beyond 2**32 are not supported.")
    bits = confidence.view(np.uint32).astype(np.uint64)  # monotone for floats >= 0
    return (bits << np.uint64(32)) | (_INDEX_MASK - index.astype(np.uint64))


@dataclasses.dataclass
class Balance:
    """How many copies each candidate of each class gets (see the module docstring).

    A candidate of class c gets base[c] copies, plus one when its key is among the
    class's extra[c] best: key >> shift[c] >= prefix[c]."""

    per_class: int  # K; 0: not balanced (every candidate once)
    predicted: np.ndarray  # per class, before the confidence filter
    candidates: np.ndarray  # per class, confidence >= min_confidence
    base: np.ndarray
    extra: np.ndarray
    shift: np.ndarray  # uint64
    prefix: np.ndarray  # uint64

    def copies(self, predicted, confidence, index, min_confidence):
        """Copies of each row (0: not selected)."""
        predicted = np.asarray(predicted, np.int64)
        candidate = passes(confidence, predicted, min_confidence)
        key = rank_key(confidence, index)
        top = (key >> self.shift[predicted]) >= self.prefix[predicted]
        copies = self.base[predicted] + ((self.extra[predicted] > 0) & top)
        return np.where(candidate, copies, 0).astype(np.int64)

    @property
    def most_copies(self):
        """Per class, the copies of its most repeated image."""
        return self.base + (self.extra > 0)

    @property
    def written(self):
        """Records written per class: K where a class has a candidate, less where
        --max_copies leaves its quota unfilled; unbalanced, its candidates."""
        return self.base * self.candidates + self.extra

    @property
    def unfilled(self):
        """Per class, K less what was written (0 for an empty or unbalanced class)."""
        if not self.per_class:
            return np.zeros_like(self.candidates)
        return np.where(self.candidates > 0, self.per_class - self.written, 0)


def balance(read, num_classes, min_confidence, per_class=0, max_copies=0, balanced=True):
    """The Balance of a set read as chunks: `read()` yields dicts of predicted,
    confidence and index arrays (any chunking). K = `per_class`, or when <= 0 the
    mean count per class after the filter (over all classes, empty ones too).
    `max_copies` > 0: no image is repeated more often; the rest of a rare class's
    quota stays unfilled. `balanced=False` (the paper's ablation): every candidate
    once, no K (per_class 0). `min_confidence`: a number, or one per class."""
    predicted = np.zeros(num_classes, np.int64)
    candidates = np.zeros(num_classes, np.int64)
    for chunk in read():
        keep = passes(chunk["confidence"], chunk["predicted"], min_confidence)
        predicted += np.bincount(chunk["predicted"], minlength=num_classes)
        candidates += np.bincount(chunk["predicted"][keep], minlength=num_classes)
    total = int(candidates.sum())
    if not total:
        cutoff = (f"--min_confidence={min_confidence}" if np.ndim(min_confidence) == 0
                  else "every per-class cut-off (--min_precision)")
        raise InputError(f"{cutoff} filters out every one of the {int(predicted.sum())} "
                         "images.")
    if not balanced:
        once = (candidates > 0).astype(np.int64)
        zeros = np.zeros(num_classes, np.uint64)
        return Balance(0, predicted, candidates, once, np.zeros(num_classes, np.int64),
                       zeros, zeros)
    k = max(int(per_class) if per_class > 0 else int(round(total / num_classes)), 1)
    n = np.maximum(candidates, 1)
    base = np.where(candidates >= k, 0, k // n) * (candidates > 0)
    extra = np.where(candidates >= k, k, k % n) * (candidates > 0)
    if max_copies > 0:  # a capped class keeps every image max_copies times, no extra
        capped = base >= max_copies
        base = np.where(capped, max_copies, base)
        extra = np.where(capped, 0, extra)
    shift, prefix = _cutoffs(read, extra, num_classes, min_confidence)
    return Balance(k, predicted, candidates, base.astype(np.int64), extra.astype(np.int64),
                   shift, prefix)


def _cutoffs(read, ranks, num_classes, min_confidence):
    """Per class, (shift, prefix) such that exactly ranks[c] candidates of class c
    have key >> shift >= prefix: a radix select, most significant digit first, that
    stops for a class once its boundary digit holds exactly the rows still needed."""
    shift = np.zeros(num_classes, np.uint64)
    prefix = np.zeros(num_classes, np.uint64)  # no ranks: every key passes
    need = np.asarray(ranks, np.int64).copy()
    active = need > 0
    bucket = np.zeros(num_classes, np.uint64)  # the digits fixed so far
    bits = 64
    while active.any():
        width = min(DIGIT_BITS, bits)
        bits -= width
        low, mask = np.uint64(bits), np.uint64((1 << width) - 1)
        hist = np.zeros((num_classes, 1 << width), np.int64)
        for chunk in read():
            cls = np.asarray(chunk["predicted"], np.int64)
            keep = passes(chunk["confidence"], cls, min_confidence) & active[cls]
            cls = cls[keep]
            key = rank_key(chunk["confidence"][keep], chunk["index"][keep])
            if bits + width < 64:  # only keys inside each class's boundary bucket
                inside = (key >> np.uint64(bits + width)) == bucket[cls]
                cls, key = cls[inside], key[inside]
            digit = ((key >> low) & mask).astype(np.int64)
            hist += np.bincount(cls * (1 << width) + digit,
                                minlength=num_classes << width).reshape(hist.shape)
        for c in np.flatnonzero(active):
            from_top = np.cumsum(hist[c, ::-1])
            pos = int(np.argmax(from_top >= need[c]))
            digit = (1 << width) - 1 - pos
            need[c] -= from_top[pos] - hist[c, digit]  # rows in higher digits are in
            bucket[c] = (bucket[c] << np.uint64(width)) | np.uint64(digit)
            if hist[c, digit] == need[c]:  # the whole boundary bucket is in: done
                shift[c], prefix[c], active[c] = low, bucket[c], False
    return shift, prefix


@dataclasses.dataclass
class Selection:
    """Rows of an in-memory probability table to write; duplicates repeat a row,
    grouped by class, best first."""

    rows: np.ndarray  # int64 [M], indices into the table
    per_class: int  # K used
    counts_predicted: list  # per class, before filtering
    counts_filtered: list  # per class, after the confidence filter
    counts_balanced: list  # per class, after top-K and duplication


def filter_and_balance(probabilities, min_confidence=0.3, per_class=0, max_copies=0,
                       balanced=True):
    """`balance` on one table (row i has index i): the counts, checkable by hand."""
    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise InputError(f"Expected a non-empty [examples, classes] table, got shape "
                         f"{probabilities.shape}.")
    chunk = {"predicted": np.argmax(probabilities, -1), "confidence": probabilities.max(-1),
             "index": np.arange(len(probabilities))}
    b = balance(lambda: [chunk], probabilities.shape[1], min_confidence, per_class,
                max_copies, balanced)
    copies = b.copies(chunk["predicted"], chunk["confidence"], chunk["index"],
                      min_confidence)
    order = np.lexsort((chunk["index"], -chunk["confidence"], chunk["predicted"]))
    rows = []
    for c in range(probabilities.shape[1]):  # whole copies of the class, then the best
        members = order[(chunk["predicted"][order] == c) & (copies[order] > 0)]
        for round_ in range(int(copies[members].max()) if len(members) else 0):
            rows.extend(members[copies[members] > round_])
    rows = np.asarray(rows, np.int64)
    return Selection(rows, b.per_class, b.predicted.tolist(), b.candidates.tolist(),
                     np.bincount(chunk["predicted"][rows],
                                 minlength=probabilities.shape[1]).tolist())
