"""How far a classifier's confidence can be trusted, and temperature scaling to fix it.

A softmax is not calibrated: a network trained with heavy noise and scored on
clean images may be under- as well as over-confident. Temperature scaling (Guo
et al., 2017) divides the logits by one T fitted to minimise the negative
log-likelihood on held-out labeled images; the predicted classes never change.
Pure numpy (the figures) and matplotlib (the diagram).
"""

import numpy as np

from nstudent.errors import InputError
from nstudent.evaluation.pictures import save_figure

ECE_BINS = 15  # equal-width confidence bins, as Guo et al.
# the range searched for T; NLL is convex in 1/T, so the search finds its minimum
T_RANGE = (0.05, 20.0)


def softmax(logits, temperature=1.0):
    """float64 softmax of logits / temperature, row-wise."""
    z = np.asarray(logits, np.float64) / float(temperature)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _checked(probabilities, labels):
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(labels, np.int64)
    if p.ndim != 2 or y.shape != (p.shape[0],) or not len(y):
        raise InputError(f"Expected [examples, classes] probabilities and one label per "
                         f"example; got shapes {p.shape} and {y.shape}.")
    return p, y


def expected_calibration_error(probabilities, labels, bins=ECE_BINS):
    """ECE of the top-label confidence: sum over equal-width bins (m-1)/M < c <= m/M
    of (share of examples in the bin) x |accuracy - mean confidence| in it."""
    p, y = _checked(probabilities, labels)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def negative_log_likelihood(probabilities, labels):
    """Mean -log p(true class)."""
    p, y = _checked(probabilities, labels)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def brier_score(probabilities, labels):
    """Mean over examples of the squared distance to the one-hot label, summed over
    classes (Brier's multi-class score: 0 best, 2 worst)."""
    p, y = _checked(probabilities, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def calibration_figures(logits, labels, temperature=1.0):
    """Accuracy, ECE, NLL and Brier of softmax(logits / temperature)."""
    p = softmax(logits, temperature)
    _, y = _checked(p, labels)
    return {"examples": int(len(y)), "accuracy": float(np.mean(p.argmax(1) == y)),
            "ece": expected_calibration_error(p, y), "nll": negative_log_likelihood(p, y),
            "brier": brier_score(p, y)}


def predicted_logits(predict, batches):
    """(float32 logits, the targets as given) over (images, targets) batches;
    `predict(images)` gives the logits (a Classifier's `logits`, or `network_outputs`'
    network in inference mode)."""
    logits, targets = [], []
    for images, target in batches.as_numpy_iterator():
        logits.append(np.asarray(predict(images), np.float32))
        targets.append(target)
    if not logits:
        raise InputError("No images to compute logits on.")
    return np.concatenate(logits), np.concatenate(targets)


def network_outputs(network, batches):
    """(float32 logits, the targets as given) of a network in inference mode."""
    return predicted_logits(lambda images: network(images, training=False), batches)


def network_logits(network, batches):
    """(float32 logits, int64 labels) of a network in inference mode over (images,
    one-hot labels) batches."""
    logits, onehot = network_outputs(network, batches)
    return logits, np.argmax(onehot, axis=-1).astype(np.int64)


def fit_temperature(logits, labels, iterations=100):
    """The T in T_RANGE minimising the NLL of softmax(logits / T) on (logits, labels):
    a golden-section search over 1/T, in which the NLL is convex."""
    logits = np.asarray(logits, np.float64)
    _checked(logits, labels)
    y = np.asarray(labels, np.int64)
    true = logits[np.arange(len(y)), y]

    def nll(beta):
        z = logits * beta
        m = z.max(axis=1)
        return float(np.mean(m + np.log(np.exp(z - m[:, None]).sum(axis=1)) - beta * true))

    low, high = 1.0 / T_RANGE[1], 1.0 / T_RANGE[0]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(iterations):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(1.0 / ((low + high) / 2.0))


def reliability_diagram(probabilities, labels, path, title, bins=ECE_BINS):
    """A PNG: accuracy against mean confidence per bin beside the diagonal, with each
    bin's share of the examples; written to a temporary name, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, y = _checked(probabilities, labels)
    confidence, correct = p.max(axis=1), p.argmax(axis=1) == y
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    share = np.array([np.mean(which == b) for b in range(bins)])
    accuracy = np.array([correct[which == b].mean() if share[b] else 0.0
                         for b in range(bins)])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres, accuracy, width=1.0 / bins, edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], "k--", label="calibrated")
    top.set_ylabel("accuracy in the bin")
    top.set_title(f"{title}\nECE {expected_calibration_error(p, y):.4f} "
                  f"({len(y)} images)", fontsize=9)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, share, width=1.0 / bins, edgecolor="black", color="grey")
    bottom.set_xlabel("top-class confidence")
    bottom.set_ylabel("share")
    fig.tight_layout()
    return save_figure(fig, path)
