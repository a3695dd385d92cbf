"""The end of a pipeline run: a table on stdout and a PNG of accuracy per generation
(top-1, or mAP for a multi-label run)."""

import os

from nstudent.export.atomic import atomic_path


def _name(row):
    role = {"teacher": "teacher", "student": "student"}.get(row["stage"], row["stage"])
    if row["stage"] == "finetune":
        role = f"fine-tuned {row['resolution']} px"
    return role


def _metric(rows):
    """'map' when the models are multi-label (their summaries hold test_map), else
    'top1'."""
    return "map" if any("test_map" in r for r in rows) else "top1"


def _fgsm_columns(rows):
    return sorted({e for r in rows for e in r.get("robustness", {}).get("fgsm", {})},
                  key=float)


def results_table(rows):
    """rows: per-model summaries (generation, stage, test_top1 or test_map, robustness,
    ...)."""
    eps = _fgsm_columns(rows)
    robust = any("robustness" in r for r in rows)
    metric = _metric(rows)
    if metric == "map":
        head = "| gen | model | parameters | test mAP | micro F1 | macro F1 |"
        columns = ("test_map", "test_micro_f1", "test_macro_f1")
    else:
        head = "| gen | model | parameters | test top-1 | test top-5 |"
        columns = ("test_top1", "test_top5")
    name = "mAP" if metric == "map" else "top-1"
    if robust:
        head += f" mean corruption {name} |" + "".join(
            f" FGSM {float(e) * 255:.3g}/255 |" for e in eps)
    lines = [head + " minutes |", "|---" * head.count("|") + "|"]
    for r in rows:
        line = (f"| {r['generation']} | {_name(r)} | {r['parameters']:,} | "
                + "".join(f"{r[c]:.4f} | " for c in columns)).rstrip()
        if robust:
            rob = r.get("robustness", {})
            corr = rob.get(f"mean_corruption_{metric}")
            line += f" {corr:.4f} |" if corr is not None else " - |"
            line += "".join(f" {rob['fgsm'][e]:.4f} |" if e in rob.get("fgsm", {}) else " - |"
                            for e in eps)
        lines.append(line + f" {r['seconds_total'] / 60:.1f} |")
    return "\n".join(lines)


def plot_accuracy(rows, path):
    """Test top-1 (mAP) per generation; with robustness, corrupted and FGSM as well."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    metric = _metric(rows)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for finetuned, style in ((False, "-"), (True, "--")):
        group = [r for r in rows if (r["stage"] == "finetune") == finetuned]
        if not group:
            continue
        gens = [r["generation"] for r in group]
        suffix = " (fine-tuned)" if finetuned else ""
        series = {"clean": [r[f"test_{metric}"] for r in group]}
        if all("robustness" in r for r in group):
            rob = [r["robustness"] for r in group]
            if all(f"mean_corruption_{metric}" in x for x in rob):
                series["mean corruption"] = [x[f"mean_corruption_{metric}"] for x in rob]
            for e in _fgsm_columns(group):
                series[f"FGSM {float(e) * 255:.3g}/255"] = [x["fgsm"].get(e) for x in rob]
        for i, (label, values) in enumerate(series.items()):
            ax.plot(gens, [100 * v for v in values], style, marker="o", color=f"C{i}",
                    label=label + suffix)
    gens = sorted({r["generation"] for r in rows})
    ax.set_xticks(gens, [f"gen{g}" + (" (teacher)" if g == 0 else "") for g in gens])
    ax.set_ylabel("test mAP (%)" if metric == "map" else "test top-1 (%)")
    ax.set_title("Noisy student: " + ("mAP" if metric == "map" else "accuracy")
                 + " per generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(os.path.abspath(path), suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
