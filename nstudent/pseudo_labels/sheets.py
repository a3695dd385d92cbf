"""Pictures of a selection: per class, a contact sheet of the most confident images
kept, the kept ones nearest the cut-off, and the most confident ones left out, each
with its confidence; the same to TensorBoard as image summaries. A user sees what
the teacher calls each class before a student learns it."""

import os
import re

import numpy as np

PER_ROW = 8
SHEETS = "pictures"  # <out>/pictures/<class>.png, <out>/pictures/logs/ (TensorBoard)


def choose(predicted, confidence, index, kept, num_classes, k=PER_ROW):
    """Per class: indices of (most confident kept, least confident kept, most confident
    left out), each at most k, with their confidences."""
    chosen = []
    for c in range(num_classes):
        rows = []
        for mask, best_first in ((kept, True), (kept, False), (~kept, True)):
            m = np.flatnonzero((predicted == c) & mask)
            order = np.lexsort((index[m], -confidence[m] if best_first else confidence[m]))
            rows.append([(int(index[i]), float(confidence[i])) for i in m[order[:k]]])
        chosen.append(rows)
    return chosen


def _file_name(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "class"


def write_sheets(split, chosen, class_names, out_dir, cutoffs):
    """One PNG per class under <out_dir>/pictures/ and the same as TensorBoard image
    summaries; `cutoffs`: each class's cut-off (None: keeps nothing). Returns the
    PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nstudent.evaluation.pictures import save_figure, to_tensorboard

    wanted = sorted({i for rows in chosen for row in rows for i, _ in row})
    images = {}
    if wanted:
        for image, _, i in split.dataset(np.asarray(wanted), with_index=True) \
                .as_numpy_iterator():
            images[int(i)] = image
    folder = os.path.join(out_dir, SHEETS)
    os.makedirs(folder, exist_ok=True)
    titles = ("most confident, kept", "kept, nearest the cut-off",
              "most confident, left out")
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
        cut = cutoffs[c]
        fig.suptitle(f"{class_names[c]}: cut-off "
                     f"{'none kept' if cut is None else format(cut, '.3f')}", fontsize=9)
        fig.tight_layout()
        paths.append(save_figure(fig, os.path.join(folder, f"{_file_name(class_names[c])}.png")))
    to_tensorboard(os.path.join(folder, "logs"),
                   {f"selection/{n}": p for n, p in zip(class_names, paths)})
    return paths
