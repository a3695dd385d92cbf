"""From teacher outputs to the pseudo-labeled set: soften, filter, balance.

Pure numpy so that the counts can be checked on hand-made tables.
"""

import dataclasses

import numpy as np


def soften(logits, temperature=1.0, hard=False):
    """Softmax of logits / temperature; one-hot of the argmax when `hard`."""
    if temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {temperature}.")
    logits = np.asarray(logits, np.float64) / temperature
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return harden(probs) if hard else probs


def harden(probabilities):
    """One-hot float32 of each row's argmax: hard pseudo-labels."""
    probabilities = np.asarray(probabilities)
    return np.eye(probabilities.shape[-1], dtype=np.float32)[np.argmax(probabilities, axis=-1)]


@dataclasses.dataclass
class Selection:
    """Rows of the probability table to write, in order; duplicates repeat a row."""

    rows: np.ndarray  # int64 [M], indices into the table
    per_class: int  # K used
    counts_predicted: list  # per class, before filtering
    counts_filtered: list  # per class, after the confidence filter
    counts_balanced: list  # per class, after top-K and duplication

    def stats(self):
        return {"per_class": self.per_class, "counts_predicted": self.counts_predicted,
                "counts_filtered": self.counts_filtered,
                "counts_balanced": self.counts_balanced}


def filter_and_balance(probabilities, min_confidence=0.3, per_class=0):
    """Keeps confident rows, then exactly K per predicted class where possible.

    Rows whose top probability is below `min_confidence` are dropped. A class
    with more than K rows keeps its K most confident; a class with fewer is
    filled up to K by repeating its rows, most confident first (whole copies,
    then the most confident remainder). `per_class` <= 0 means K = the mean
    count per class after filtering. A class left with no rows stays empty.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(f"Expected a non-empty [examples, classes] table, got shape "
                         f"{probabilities.shape}.")
    num_classes = probabilities.shape[1]
    predicted = np.argmax(probabilities, axis=-1)
    confidence = probabilities.max(axis=-1)
    keep = confidence >= min_confidence
    counts_predicted = np.bincount(predicted, minlength=num_classes)
    counts_filtered = np.bincount(predicted[keep], minlength=num_classes)
    if not keep.any():
        raise ValueError(
            f"--min_confidence={min_confidence} filters out every one of the "
            f"{len(confidence)} images (highest confidence {confidence.max():.3f}).")
    k = int(per_class) if per_class > 0 else int(round(keep.sum() / num_classes))
    k = max(k, 1)
    rows = []
    for c in range(num_classes):
        members = np.flatnonzero(keep & (predicted == c))
        if not len(members):
            continue
        # most confident first; ties by index so the choice is reproducible
        members = members[np.lexsort((members, -confidence[members]))]
        if len(members) >= k:
            rows.append(members[:k])
        else:
            rows.append(np.resize(members, k))  # cycles: whole copies, then the best
    rows = np.concatenate(rows).astype(np.int64)
    counts_balanced = np.bincount(predicted[rows], minlength=num_classes)
    return Selection(rows, k, counts_predicted.tolist(), counts_filtered.tolist(),
                     counts_balanced.tolist())
