"""The end of a pipeline run: a table on stdout and a PNG of accuracy per generation."""

import os

from nstudent.export.atomic import atomic_path


def results_table(rows):
    """rows: per-generation summaries (generation, stage, test_top1, ...)."""
    lines = ["| gen | role | parameters | test top-1 | test top-5 | minutes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['generation']} | {r['stage']} | {r['parameters']:,} | "
                     f"{r['test_top1']:.4f} | {r['test_top5']:.4f} | "
                     f"{r['seconds_total'] / 60:.1f} |")
    return "\n".join(lines)


def plot_accuracy(rows, path):
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    gens = [r["generation"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(gens, [100 * r["test_top1"] for r in rows], "o-", label="test top-1")
    ax.set_xticks(gens, [f"gen{g}" + (" (teacher)" if g == 0 else "") for g in gens])
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Noisy student: accuracy per generation")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(os.path.abspath(path), suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
