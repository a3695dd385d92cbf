"""Per-class confidence cut-offs from a precision a user asks for.

One global --min_confidence serves every class whether the teacher is good or
bad at it. Here each class gets the lowest cut-off t at which the teacher's
precision on held-out labeled images it predicts as that class is at least P,
and stays so at every cut-off above t (precision is not monotone in the
cut-off, so the first crossing from below is not enough). Pure numpy.
"""

import dataclasses

import numpy as np

from nstudent import ranges
from nstudent.errors import InputError

NOTHING = float("inf")  # a class whose most confident predictions already miss P


@dataclasses.dataclass(frozen=True)
class ClassCutoff:
    cutoff: float  # keep an image of this predicted class when confidence >= cutoff
    source: str  # "precision", "global" (too few held-out predictions), "none" (P unmet)
    held_out: int  # held-out images predicted as the class
    precision: float = None  # on the held-out images at the cut-off (None: global)


def precision_cutoffs(confidence, predicted, labels, num_classes, min_precision,
                      min_count, global_cutoff):
    """A ClassCutoff per class from held-out (confidence, predicted, true label).

    Among the held-out images predicted as c, the precision at cut-off u is the
    share of those with confidence >= u that are truly c. The class's cut-off is
    the lowest distinct confidence t with precision >= `min_precision` at t and at
    every distinct confidence above it. Fewer than `min_count` held-out images
    predicted as c: `global_cutoff` stands. P unmet even by the most confident
    ones: NOTHING (the class keeps no image)."""
    ranges.check("min_precision", min_precision)
    if not min_precision:
        raise InputError("Per-class cut-offs need a precision target: --min_precision "
                         "above 0.")
    confidence = np.asarray(confidence, np.float64)
    predicted = np.asarray(predicted, np.int64)
    labels = np.asarray(labels, np.int64)
    result = []
    for c in range(num_classes):
        mine = predicted == c
        n = int(mine.sum())
        if n < max(min_count, 1):
            result.append(ClassCutoff(float(global_cutoff), "global", n))
            continue
        conf, hit = confidence[mine], labels[mine] == c
        order = np.argsort(-conf, kind="stable")
        conf, hit = conf[order], hit[order]
        # one cut-off per distinct confidence: the last of each run of equal values
        last = np.r_[conf[1:] != conf[:-1], True]
        precision = (np.cumsum(hit) / np.arange(1, n + 1))[last]
        values = conf[last]
        ok = np.cumprod(precision >= min_precision).astype(bool)  # from the top down
        if not ok[0]:
            result.append(ClassCutoff(NOTHING, "none", n, float(precision[0])))
            continue
        k = int(np.flatnonzero(ok)[-1])
        result.append(ClassCutoff(float(values[k]), "precision", n, float(precision[k])))
    return result
