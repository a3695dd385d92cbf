"""Which training examples keep their labels and which become unlabeled."""

import numpy as np
from absl import logging

from nstudent import ranges
from nstudent.data.sources import DataError


def split_labeled(labels, num_classes, labels_per_class, seed):
    """Returns (labeled, unlabeled) index arrays of a split, both sorted.

    `labels_per_class` <= 0 keeps every label. The choice depends only on the
    labels and the seed, so every stage of a run sees the same subset.
    """
    labels = np.asarray(labels)
    if labels_per_class <= 0:
        return np.arange(len(labels)), np.arange(0)
    if labels.ndim == 2:
        return _split_multilabel(labels, labels_per_class, seed)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < labels_per_class:
            raise DataError(
                f"--labels_per_class={labels_per_class} but class {c} has only "
                f"{len(members)} training examples.")
        chosen.append(rng.choice(members, labels_per_class, replace=False))
    labeled = np.sort(np.concatenate(chosen))
    unlabeled = np.setdiff1d(np.arange(len(labels)), labeled)
    return labeled, unlabeled


def _split_multilabel(labels, labels_per_class, seed):
    """Multi-hot labels [N, C]: images in a seeded order, each kept when it is a
    positive of a class still short of `labels_per_class`, until none is short.
    Frequent classes end above K (an image brings all its labels)."""
    totals = labels.sum(axis=0)
    short = np.flatnonzero(totals < labels_per_class)
    if short.size:
        c = int(short[0])
        raise DataError(f"--labels_per_class={labels_per_class} but class {c} has only "
                        f"{int(totals[c])} positive training examples.")
    counts = np.zeros(labels.shape[1], np.int64)
    chosen = []
    for i in np.random.default_rng(seed).permutation(len(labels)):
        if np.any((labels[i] > 0) & (counts < labels_per_class)):
            chosen.append(i)
            counts += labels[i] > 0
            if np.all(counts >= labels_per_class):
                break
    labeled = np.sort(np.asarray(chosen, np.int64))
    logging.info("Labeled subset: %d images, positives per class %s (K=%d).", len(labeled),
                 counts.tolist(), labels_per_class)
    return labeled, np.setdiff1d(np.arange(len(labels)), labeled)


def positives_per_class(labels, indices):
    """Multi-label: how many of `indices` are positives of each class (logs, reports)."""
    return (np.asarray(labels)[np.asarray(indices, np.int64)] > 0).sum(axis=0).tolist()


def carve_validation(labeled, labels, fraction, seed):
    """Holds out `fraction` of each class's labeled examples (at least one where a
    class has two or more) for validation: returns (train, validation) indices,
    sorted. Depends only on the labels and the seed."""
    ranges.check("validation_fraction", fraction)
    labeled = np.asarray(labeled)
    if fraction == 0:
        return labeled, labeled[:0]
    labels = np.asarray(labels)[labeled]
    rng = np.random.default_rng([seed, 1])
    if labels.ndim == 2:  # multi-label: no single class to stratify by
        n = min(max(int(round(fraction * len(labeled))), 1), len(labeled) - 1)
        validation = np.sort(rng.choice(labeled, max(n, 0), replace=False))
        return np.setdiff1d(labeled, validation), validation
    held = []
    for c in np.unique(labels):
        members = labeled[labels == c]
        n = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        if n > 0:
            held.append(rng.choice(members, n, replace=False))
    validation = np.sort(np.concatenate(held)) if held else labeled[:0]
    return np.setdiff1d(labeled, validation), validation
