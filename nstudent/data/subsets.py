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
