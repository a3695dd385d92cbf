"""Which training examples keep their labels and which become unlabeled."""

import numpy as np

from nstudent.data.sources import DataError


def split_labeled(labels, num_classes, labels_per_class, seed):
    """Returns (labeled, unlabeled) index arrays of a split, both sorted.

    `labels_per_class` <= 0 keeps every label. The choice depends only on the
    labels and the seed, so every stage of a run sees the same subset.
    """
    labels = np.asarray(labels)
    if labels_per_class <= 0:
        return np.arange(len(labels)), np.arange(0)
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


def carve_validation(labeled, labels, fraction, seed):
    """Holds out `fraction` of each class's labeled examples (at least one where a
    class has two or more) for validation: returns (train, validation) indices,
    sorted. Depends only on the labels and the seed."""
    labeled = np.asarray(labeled)
    if fraction <= 0:
        return labeled, labeled[:0]
    if fraction >= 1:
        raise DataError(f"--validation_fraction must be below 1, got {fraction}.")
    labels = np.asarray(labels)[labeled]
    rng = np.random.default_rng([seed, 1])
    held = []
    for c in np.unique(labels):
        members = labeled[labels == c]
        n = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        if n > 0:
            held.append(rng.choice(members, n, replace=False))
    validation = np.sort(np.concatenate(held)) if held else labeled[:0]
    return np.setdiff1d(labeled, validation), validation
