"""Pictures people would rather look at than read: the confusion matrix of a
classifier on the test split (a multi-label one's average precision per class).
PNGs through matplotlib (Agg), written whole (temporary name, then renamed)."""

import os

import numpy as np


def confusion_matrix(labels, predicted, num_classes):
    """int64 [true, predicted] counts."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def confusion_png(counts, class_names, path, title):
    """Rows: the true class, normalised to sum 1 (the recall sits on the diagonal);
    each cell shows its share, the row its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    share = counts / np.maximum(rows, 1)
    side = max(4.0, 0.55 * n + 2.0)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center",
                            fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), [f"{c} ({int(r)})" for c, r in zip(class_names, rows[:, 0])],
                  fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (test images)")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title}\ntop-1 {accuracy:.4f} on {int(counts.sum())} images", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def average_precision_png(per_class, class_names, thresholds, path, title):
    """A multi-label classifier: one bar per class, its test AP (a class without test
    positives is marked, not drawn), its decision threshold written beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.32 * n + 1.2)))
    values = [ap if ap is not None else 0.0 for ap in per_class]
    ax.barh(range(n), values, color="tab:blue")
    for i, (ap, t) in enumerate(zip(per_class, thresholds)):
        text = "no test positives" if ap is None else f"AP {ap:.3f}"
        # beside the bar, in the margin right of 1.0: never over a long bar
        ax.text((ap or 0.0) + 0.01, i, f"{text}, threshold {t:.2f}", va="center",
                fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.42)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.axvline(1.0, color="0.6", linewidth=0.8)
    ax.set_xlabel("average precision (test split)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def to_tensorboard(log_dir, pngs, step=0):
    """PNG files as TensorBoard image summaries: {tag: path}."""
    import tensorflow as tf

    with tf.summary.create_file_writer(log_dir).as_default():
        for tag, path in pngs.items():
            png = tf.io.decode_png(tf.io.read_file(path), channels=3)
            tf.summary.image(tag, png[None], step=step)


def curves_png(training, validation, path, title, start_epoch=0):
    """Left: the training loss by epoch (every loss part the stage logs); right: the
    training top-1 by epoch and the validation top-1 where it was taken. `training`:
    {name: [per epoch]} from epoch `start_epoch` + 1 (a resumed run's history starts
    late); `validation`: [{"epoch", "top1", ...}] or None."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, values in sorted(training.items()):
        epochs = np.arange(start_epoch + 1, start_epoch + 1 + len(values))
        if name.endswith("loss"):
            loss_ax.plot(epochs, values, label=name)
        elif name.endswith(("top1", "auc_pr")):
            top1_ax.plot(epochs, values, label=f"train {name}")
    validation = validation or []
    points = [(v["epoch"], v["loss"]) for v in validation if "loss" in v]
    if points:
        x, y = zip(*points)
        loss_ax.plot(x, y, "o-", color="black", label="validation loss")
    for key in ("top1", "map"):
        points = [(v["epoch"], v[key]) for v in validation if key in v]
        if points:
            x, y = zip(*points)
            top1_ax.plot(x, y, "o-", color="black", label=f"validation {key}")
            best = int(np.argmax(y))
            top1_ax.annotate(f"best {y[best]:.4f}", (x[best], y[best]),
                             textcoords="offset points", xytext=(0, 6), ha="center")
    for ax, what in ((loss_ax, "loss"), (top1_ax, "top-1")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
