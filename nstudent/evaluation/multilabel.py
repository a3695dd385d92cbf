"""Scores of a multi-label classifier (one sigmoid per class), in numpy.

mAP is the macro mean over classes of the non-interpolated average precision,
AP = sum over ranks n of (R_n - R_{n-1}) P_n, the test images ranked by score.
Ties: images of equal score enter the ranking together (one cut per distinct
score), so AP never depends on how a sort orders them. A class without test
positives has no AP: it is left out of the mean and reported as skipped.
F1 needs a decision per class: `choose_thresholds` picks each class's threshold
on validation images (never on test), and runs record them.
"""

import numpy as np

from nstudent.errors import InputError

DEFAULT_THRESHOLD = 0.5  # for a class whose validation images have no positive


def sigmoid(logits, temperature=1.0):
    """float64 sigmoid of logits / temperature."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64) / float(temperature)))


def _checked(scores, targets):
    s = np.asarray(scores, np.float64)
    y = np.asarray(targets)
    if s.ndim != 2 or y.shape != s.shape or not len(s):
        raise InputError(f"Expected [examples, classes] scores and targets of one shape; "
                         f"got {s.shape} and {y.shape}.")
    return s, y > 0.5


def _cuts(scores, targets):
    """Per distinct score, highest first: (score, true positives, predicted positives)
    when every image at or above it is called positive."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], targets[order]
    ends = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)
    return s[ends], np.cumsum(y)[ends], ends + 1


def average_precision(scores, targets):
    """AP of one class (1-D scores and 0/1 targets); NaN without positives."""
    scores, targets = _checked(np.reshape(scores, (-1, 1)), np.reshape(targets, (-1, 1)))
    positives = targets.sum()
    if not positives:
        return float("nan")
    _, tp, predicted = _cuts(scores[:, 0], targets[:, 0])
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * tp / predicted))


def mean_average_precision(scores, targets, class_names=None):
    """{"map", "per_class" (AP or None per class), "skipped" (classes without test
    positives, by name when `class_names` is given)}."""
    s, y = _checked(scores, targets)
    per_class = [average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])]
    present = [ap for ap in per_class if not np.isnan(ap)]
    names = list(class_names) if class_names is not None else list(range(s.shape[1]))
    return {"map": float(np.mean(present)) if present else float("nan"),
            "per_class": [None if np.isnan(ap) else ap for ap in per_class],
            "skipped": [names[c] for c, ap in enumerate(per_class) if np.isnan(ap)]}


def fit_bias(logits, targets, iterations=80):
    """Per class, the shift b that calibrates sigmoid(logits + b) on these (held-out)
    images: the minimum of their mean binary cross-entropy, where the mean predicted
    probability equals the share of positives (the loss's derivative in b). A loss
    that weighs positives and negatives apart moves every logit by about the log of
    the class's negative-to-positive ratio; this takes it back. Found by bisection
    (the mean rises with b); 0 for a class with no positive or no negative here."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(targets) > 0.5
    shift = np.zeros(z.shape[1])
    for c in range(z.shape[1]):
        share = y[:, c].mean()
        if share in (0.0, 1.0):
            continue
        reach = np.abs(z[:, c]).max() + 30.0  # past every logit: the whole step
        low, high = -reach, reach
        for _ in range(iterations):
            mid = (low + high) / 2
            if sigmoid(z[:, c] + mid).mean() < share:
                low = mid
            else:
                high = mid
        shift[c] = (low + high) / 2
    return shift


def choose_thresholds(scores, targets):
    """Per class, the score cut (predict positive at >= it) with the best F1 on these
    (validation) images, the higher cut on a tie; DEFAULT_THRESHOLD where the class has
    no positive there."""
    s, y = _checked(scores, targets)
    thresholds = np.full(s.shape[1], DEFAULT_THRESHOLD)
    for c in range(s.shape[1]):
        positives = y[:, c].sum()
        if not positives:
            continue
        cut, tp, predicted = _cuts(s[:, c], y[:, c])
        f1 = 2 * tp / (predicted + positives)
        thresholds[c] = cut[int(np.argmax(f1))]  # argmax: the first, highest cut
    return thresholds


def f1_scores(scores, targets, thresholds):
    """Micro F1 (over every class-image decision) and macro F1 (the mean over classes
    with a positive or a prediction; a class with neither has no F1) at `thresholds`."""
    s, y = _checked(scores, targets)
    predicted = s >= np.asarray(thresholds, np.float64)[None, :]
    tp = (predicted & y).sum(axis=0)
    fp = (predicted & ~y).sum(axis=0)
    fn = (~predicted & y).sum(axis=0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    denominators = 2 * tp + fp + fn
    defined = denominators > 0
    macro = float(np.mean(2 * tp[defined] / denominators[defined])) if defined.any() \
        else float("nan")
    return {"micro_f1": float(micro), "macro_f1": macro}


def scores(logits, targets, thresholds, class_names=None):
    """A multi-label evaluation: {"map", "per_class", "skipped", "micro_f1",
    "macro_f1", "examples"}. Ranked by logit (a float32 sigmoid saturates to equal
    scores that would tie); F1 of the sigmoids at `thresholds`."""
    ranked = mean_average_precision(logits, targets, class_names)
    return {**ranked, **f1_scores(sigmoid(logits), targets, thresholds),
            "examples": int(len(targets))}
