"""Pictures of a selection: per class, a contact sheet of the most confident images
kept, the kept ones nearest the cut-off, and the most confident ones left out, each
with its confidence; the same to TensorBoard as image summaries. A user sees what
the teacher calls each class before a student learns it. Multi-label selections get
the same three rows per class from that class's sigmoid: its positives, and the
images most probable for it that are not positives (masked, or negatives)."""

import os
import re

import numpy as np

PER_ROW = 8
SHEETS = "pictures"  # <out>/pictures/<class>.png, <out>/pictures/logs/ (TensorBoard)


TITLES = ("most confident, kept", "kept, nearest the cut-off", "most confident, left out")
MULTILABEL_TITLES = ("most probable positives", "positives nearest the cut-off",
                     "most probable, not positive")


def _rows(scores, index, kept, k):
    """(most confident kept, least confident kept, most confident left out) among the
    candidates of one class, each at most k (index, score) pairs; ties: lower index."""
    rows = []
    for mask, best_first in ((kept, True), (kept, False), (~kept, True)):
        m = np.flatnonzero(mask)
        order = np.lexsort((index[m], -scores[m] if best_first else scores[m]))
        rows.append([(int(index[i]), float(scores[i])) for i in m[order[:k]]])
    return rows


def choose(predicted, confidence, index, kept, num_classes, k=PER_ROW):
    """Per class: indices of (most confident kept, least confident kept, most confident
    left out), each at most k, with their confidences."""
    return [_rows(confidence[m], index[m], kept[m], k)
            for m in (predicted == c for c in range(num_classes))]


def choose_multilabel(probabilities, positive, index, k=PER_ROW):
    """Per class c over every image: (highest p_c among its positives, lowest p_c among
    them, highest p_c among the rest), each at most k (index, p_c) pairs."""
    return [_rows(probabilities[:, c], index, positive[:, c], k)
            for c in range(probabilities.shape[1])]


def candidates(chosen):
    """The indices a `chosen` names: what a chunk keeps for the final choice."""
    return sorted({i for rows in chosen for row in rows for i, _ in row})


def _file_name(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "class"


def heading(name, cutoff):
    """A class's sheet title: its name and its cut-off (None: keeps nothing)."""
    return f"{name}: cut-off {'none kept' if cutoff is None else format(cutoff, '.3f')}"


def write_sheets(split, chosen, class_names, out_dir, headings, titles=TITLES):
    """One PNG per class under <out_dir>/pictures/ and the same as TensorBoard image
    summaries; `headings`: each class's title (heading()), `titles`: the three rows'.
    Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nstudent.evaluation.pictures import save_figure, to_tensorboard

    wanted = candidates(chosen)
    images = {}
    if wanted:
        for image, _, i in split.dataset(np.asarray(wanted), with_index=True) \
                .as_numpy_iterator():
            images[int(i)] = image
    folder = os.path.join(out_dir, SHEETS)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for c, rows in enumerate(chosen):
        fig, axes = plt.subplots(3, PER_ROW, figsize=(PER_ROW * 1.3, 3 * 1.6))
        for r, (row, title) in enumerate(zip(rows, titles)):
            axes[r, 0].set_ylabel(title, fontsize=7)
            for j in range(PER_ROW):
                ax = axes[r, j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(row) and row[j][0] in images:
                    image = images[row[j][0]]
                    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image,
                              cmap="gray" if image.shape[-1] == 1 else None, vmin=0,
                              vmax=255)
                    ax.set_title(f"{row[j][1]:.3f}", fontsize=7)
                else:
                    ax.axis("off")
        fig.suptitle(headings[c], fontsize=9)
        fig.tight_layout()
        paths.append(save_figure(fig, os.path.join(folder, f"{_file_name(class_names[c])}.png")))
    to_tensorboard(os.path.join(folder, "logs"),
                   {f"selection/{n}": p for n, p in zip(class_names, paths)})
    return paths
