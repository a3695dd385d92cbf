"""Issue 32's grid: every model trained to its plateau; each student against the best
supervised model of its architecture and against a plain Keras CNN on the same labels.

  nohup python bench/converged.py > runs/converged.log 2>&1 &   # run (resumable)
  python bench/converged.py --rows=teacher,plain_cnn --seeds=0  # pilots first
  python bench/converged.py --write                             # RESULTS.md block

The recipe is the reference's small-image one (google-research/noisystudent, SVHN):
the small-image stride plan (a 4x4 map at the head), RandAugment, the student's loss
labeled CE + unlabeled_ratio x pseudo CE. Every model holds out 10% of its labels
(--validation_fraction) and is validated on them every --eval_every_epochs; budgets
are chosen on those curves (the pilot rows `*_x2` double a budget), never on the test
split. Each finished (row, seed) appends one JSON line to --results (committed) with
the commit the grid ran from; a rerun skips finished lines of the same settings and a
killed row resumes from its tools' backups. Run it from a `git worktree` of a fixed
commit so that edits in the main tree do not change a running grid.
"""

import dataclasses
import datetime
import json
import math
import os
import subprocess

import numpy as np
from absl import app, flags
from common import (
    ROOT,
    append_line,
    cpu_name,
    define_grid_flags,
    mean_std,
    paired_t_test,
    pending,
    read_jsonl,
    read_metrics,
    run_tool,
    settings_key,
    timed_tool,
    write_results_block,
)

define_grid_flags("converged")
flags.DEFINE_integer("teacher_epochs", 100, "Epochs of the teacher (and of every "
                     "supervised EfficientNet row over its labels).")
flags.DEFINE_integer("cnn_epochs", 100, "Epochs of the plain CNN rows.")
flags.DEFINE_integer("student_steps", 2000, "Steps of every student row (2,000 x 512 "
                     "images: about an hour on the 2 cores).")
flags.DEFINE_integer("control_steps", 3000, "Steps of the supervised controls (the "
                     "student's architecture on the labels alone).")
flags.DEFINE_float("large_width", 0.75, "Width scale of the larger student and its "
                   "control (the teacher: 0.5).")
FLAGS = flags.FLAGS
BEGIN, END = ("<!-- bench/converged.py: begin -->", "<!-- bench/converged.py: end -->")

VALIDATION = ["--validation_fraction=0.1", "--backup_every_steps=200"]
TEACHER = ["--flagfile=flags/fashion_mnist_teacher.cfg", "--stage_strides=small",
           *VALIDATION]
# the plain CNN a user would train instead: flip and translate (a padded random crop of
# 4 px), no RandAugment, no dropout, AdamW with cosine decay (the flagfile's optimizer)
PLAIN_CNN = ["--model=cnn", "--width_scale=1", "--depth_scale=1", "--randaugment_layers=0",
             "--crop_padding=4", "--dropout=0", "--stochastic_depth=0"]
STUDENT = ["--min_confidence=0.3", "--temperature=1.0", "--unlabeled_ratio=3",
           "--warmup_epochs=1"]
NO_NOISE = ["--nopseudo_noise", "--randaugment_layers=0", "--norandom_flip",
            "--crop_padding=0", "--dropout=0", "--stochastic_depth=0"]


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    what: str  # the RESULTS.md wording
    kind: str  # supervised | student
    labels: int = 400  # labeled images per class (0: all 60,000)
    seeds: tuple = (0, 1, 2)
    model: tuple = ()  # model flags ((): the teacher's architecture)
    budget: str = "teacher_epochs"  # the FLAGS budget: *_epochs or *_steps
    budget_scale: int = 1  # the pilot rows double it
    labels_from: str = ""  # student: the row whose model labels (same seed)
    label_flags: tuple = ()  # student: the pseudo-labeling's own flags
    extra: tuple = ()  # more training flags of this row


LARGE = ("--width_scale={large_width}",)
ROWS = (
    Row("plain_cnn", "plain Keras CNN (0.29M), supervised", "supervised",
        model=tuple(PLAIN_CNN), budget="cnn_epochs"),
    Row("teacher", "teacher (B0 w0.5 d0.5, small-image strides), supervised",
        "supervised"),
    Row("control", "control: the student's architecture (w0.75), supervised",
        "supervised", model=LARGE, budget="control_steps"),
    Row("student", "student, larger (w0.75), from scratch, labeled by the teacher",
        "student", model=LARGE, budget="student_steps", labels_from="teacher"),
    Row("gen2", "generation 2 (w0.75, from scratch, labeled by the student)", "student",
        model=LARGE, budget="student_steps", labels_from="student"),
    Row("no_pseudo_noise", "ablation: no noise on the pseudo-labeled images", "student",
        model=LARGE, budget="student_steps", labels_from="teacher",
        extra=("--nopseudo_noise",)),
    Row("no_noise", "ablation: no noise at all", "student", model=LARGE,
        budget="student_steps", labels_from="teacher", extra=tuple(NO_NOISE)),
    Row("hard_labels", "ablation: hard pseudo-labels", "student", model=LARGE,
        budget="student_steps", labels_from="teacher", label_flags=("--hard_labels",)),
    Row("ratio_1", "ablation: unlabeled batch ratio 1", "student", model=LARGE,
        budget="student_steps", labels_from="teacher", extra=("--unlabeled_ratio=1",)),
    Row("plain_cnn_100", "plain Keras CNN, 100 labels per class", "supervised",
        labels=100, model=tuple(PLAIN_CNN), budget="cnn_epochs"),
    Row("teacher_100", "teacher, 100 labels per class", "supervised", labels=100),
    Row("control_100", "control (w0.75), 100 labels per class", "supervised", labels=100,
        model=LARGE, budget="control_steps"),
    Row("student_100", "student (w0.75), 100 labels per class", "student", labels=100,
        model=LARGE, budget="student_steps", labels_from="teacher_100"),
    Row("supervised_all", "supervised on all 60,000 labels (w0.75): the ceiling",
        "supervised", labels=0, seeds=(0,), model=LARGE, budget="control_steps"),
    # pilots of the noise, chosen on validation: the reference's op table at its SVHN
    # magnitude with its small-image Cutout (half the side)
    Row("teacher_reference_noise", "pilot: teacher, the reference's RandAugment (M=5) "
        "and Cutout 16", "supervised", seeds=(0,),
        extra=("--randaugment_impl=reference", "--randaugment_magnitude=5", "--cutout=16")),
    Row("teacher_label_smoothing", "pilot: teacher, label smoothing 0.1 (the "
        "reference's)", "supervised", seeds=(0,), extra=("--label_smoothing=0.1",)),
    # the reference averages the weights (0.9999 over 109k steps); 0.999 spans about
    # 1,000 of the teacher's 2,800 steps
    Row("teacher_ema", "pilot: teacher, weight EMA 0.999", "supervised", seeds=(0,),
        extra=("--ema_decay=0.999",)),
    # pilots: the budget doubled, one seed (a family counts as converged when doubling
    # raises validation top-1 by under 0.3 points)
    Row("plain_cnn_x2", "pilot: plain CNN, budget x2", "supervised", seeds=(0,),
        model=tuple(PLAIN_CNN), budget="cnn_epochs", budget_scale=2),
    Row("teacher_x2", "pilot: teacher, budget x2", "supervised", seeds=(0,),
        budget_scale=2),
    Row("control_x2", "pilot: control, budget x2", "supervised", seeds=(0,), model=LARGE,
        budget="control_steps", budget_scale=2),
    Row("student_x2", "pilot: student, budget x2", "student", seeds=(0,), model=LARGE,
        budget="student_steps", budget_scale=2, labels_from="teacher"),
)
BY_NAME = {r.name: r for r in ROWS}
# the paired differences the write-up reads (a - b over the seeds both have)
COMPARISONS = (
    ("teacher", "plain_cnn"), ("control", "plain_cnn"), ("student", "control"),
    ("student", "teacher"), ("student", "plain_cnn"), ("gen2", "student"),
    ("no_pseudo_noise", "student"), ("no_noise", "student"), ("hard_labels", "student"),
    ("ratio_1", "student"), ("student_100", "control_100"), ("student_100", "teacher_100"),
    ("teacher_100", "plain_cnn_100"),
)
# (pilot, its base row, what the pilot asks): the doubled budgets say whether a family
# is converged, the noise pilot which noise the grid keeps (validation, never test)
PILOTS = (("plain_cnn_x2", "plain_cnn", "doubling"), ("teacher_x2", "teacher", "doubling"),
          ("control_x2", "control", "doubling"), ("student_x2", "student", "doubling"),
          ("teacher_reference_noise", "teacher", "noise"),
          ("teacher_label_smoothing", "teacher", "label smoothing"),
          ("teacher_ema", "teacher", "weight EMA"))


def budget_flag(row):
    value = getattr(FLAGS, row.budget) * row.budget_scale
    if row.budget.endswith("_epochs"):
        return f"--epochs={value}"
    return f"--{'student' if row.kind == 'student' else 'train'}_steps={value}"


def eval_every(row):
    """About 20 validations a run, in epochs of that run: a supervised step budget
    splits into epochs of one pass over the labels (~28 steps at 400 per class), a
    student's into passes over the pseudo-labels (~145 steps)."""
    if row.budget.endswith("_epochs"):
        return max(1, getattr(FLAGS, row.budget) * row.budget_scale // 20)
    return 1 if row.kind == "student" else 5


def settings(row):
    """What a row's result depends on beyond its seed and the code."""
    return {"row": row.name, "labels_per_class": row.labels, "kind": row.kind,
            "model": [m.format(large_width=FLAGS.large_width) for m in row.model],
            "budget": budget_flag(row), "labels_from": row.labels_from,
            "label_flags": list(row.label_flags), "extra": list(row.extra),
            "teacher_flags": TEACHER, "student_flags": STUDENT, "flags": FLAGS.flags}


def commit():
    """The commit the grid runs from (a worktree's HEAD), '+' when files differ."""
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head + ("+" if dirty else "") if head else "unknown"


class Grid:
    """Builds each row's model (and what it needs) under `out`, seed by seed."""

    def __init__(self, out):
        self.out = out

    def _dir(self, row, seed):
        return os.path.join(self.out, f"seed{seed}", row.name)

    def _base(self, row, seed):
        model = [m.format(large_width=FLAGS.large_width) for m in row.model]
        return [*TEACHER, f"--labels_per_class={row.labels}", f"--seed={seed}", *model,
                *FLAGS.flags]

    def model(self, row, seed):
        """The row's trained model folder (trained, with its teacher, when missing)."""
        out = self._dir(row, seed)
        common = [*self._base(row, seed), budget_flag(row),
                  f"--eval_every_epochs={eval_every(row)}", *row.extra]
        if row.kind == "supervised":
            timed_tool("train.py", out, *common)
        else:
            labels = self.pseudo_labels(BY_NAME[row.labels_from], seed, row.label_flags)
            timed_tool("train.py", out, *common, *STUDENT, f"--pseudo_labels={labels}")
        return out

    def pseudo_labels(self, teacher_row, seed, label_flags):
        teacher = self.model(teacher_row, seed)
        name = "-".join(f.lstrip("-") for f in label_flags) or "soft"
        out = os.path.join(self.out, f"seed{seed}", f"labels_{name}_by_{teacher_row.name}")
        if not os.path.exists(os.path.join(out, "stats.json")):
            run_tool("pseudo_label.py", *self._base(teacher_row, seed), *STUDENT,
                     *label_flags, f"--teacher={teacher}", f"--out={out}")
        return out


def plateau(curve):
    """From the validation curve: the best top-1, the mean of the last quarter of the
    validations, and whether the last quarter stays within 0.3 points of the best."""
    top1 = [point["top1"] for point in curve or [] if "top1" in point]
    if not top1:
        return {"best": None, "last_quarter": None, "flat_end": None}
    tail = top1[-max(1, len(top1) // 4):]
    return {"best": round(max(top1), 4), "last_quarter": round(float(np.mean(tail)), 4),
            "flat_end": bool(max(top1) - min(tail) < 0.003)}


def result_line(row, seed, model_dir):
    m = read_metrics(model_dir)
    timing = json.load(open(model_dir + ".timing.json"))
    steps = m["optimizer_iterations"]
    batch = m["input"]["batch_size"]
    per_step = batch * (1 + m["unlabeled_ratio"]) if row.kind == "student" else batch
    cores = os.cpu_count()
    return {
        "row": row.name, "seed": seed, "labels_per_class": row.labels,
        "test_top1": round(m["test_top1"], 4), "test_top5": round(m["test_top5"], 4),
        "validation_top1": round(m["validation_top1"], 4),
        "validation_examples": m["validation_examples"], "steps": steps,
        "images_seen": steps * per_step, "parameters": m["parameters"],
        "minutes": round(timing["wall_seconds"] / 60, 1),
        "cpu_share": round(timing["cpu_seconds"] / max(timing["wall_seconds"], 1e-9) / cores,
                           2),
        "plateau": plateau(m.get("validation_curve")),
        "commit": commit(), "settings_key": settings_key(settings(row)),
        "settings": settings(row), "machine": f"{cores}-core {cpu_name()}",
        "backend": m["versions"]["backend"], "date": datetime.date.today().isoformat()}


def run_grid():
    os.makedirs(os.path.dirname(FLAGS.results), exist_ok=True)
    done = {(r["row"], r["seed"], r["settings_key"]) for r in read_jsonl(FLAGS.results)}
    grid = Grid(os.path.abspath(FLAGS.out))
    for row, seed in pending(ROWS, done, lambda r: settings_key(settings(r)), FLAGS.rows,
                             FLAGS.seeds, FLAGS.stop_after_hours):
        append_line(FLAGS.results, result_line(row, seed, grid.model(row, seed)))


def validation_noise(rs):
    """The binomial standard error of a difference of two validation top-1 values on
    the same number of images: sqrt(2 p (1 - p) / n)."""
    p = float(np.mean([r["validation_top1"] for r in rs]))
    return math.sqrt(2 * p * (1 - p) / rs[0]["validation_examples"])


def _points(x):
    return f"{100 * x:+.2f}"


def render(results):
    """The rows (mean ± std over seeds), the pilots' doubling and the paired t-tests."""
    latest = {}
    for r in results:  # the last line of each (row, seed) of the current settings
        if r["row"] in BY_NAME and r["settings_key"] == settings_key(settings(BY_NAME[r["row"]])):
            latest[r["row"], r["seed"]] = r
    current = list(latest.values())
    lines = ["| row | labels/class | seeds | test top-1 | validation top-1 | parameters | "
             "steps | images seen | minutes per run | validation: best, last quarter |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        rs = [r for r in current if r["row"] == row.name]
        if not rs:
            continue
        top1, std = mean_std([r["test_top1"] for r in rs])
        val, _ = mean_std([r["validation_top1"] for r in rs])
        spread = f" ± {std:.4f}" if std is not None else ""
        best = "; ".join(f"{r['plateau']['best']}, {r['plateau']['last_quarter']}"
                         for r in rs if r["plateau"]["best"] is not None)
        lines.append(
            f"| {row.what} | {row.labels or 'all'} | {len(rs)} | {top1:.4f}{spread} | "
            f"{val:.4f} | {rs[0]['parameters']:,} | {rs[0]['steps']:,} | "
            f"{rs[0]['images_seen'] / 1e6:.2f}M | "
            f"{', '.join(str(r['minutes']) for r in rs)} | {best} |")
    pilots = []
    for pilot, base, asks in PILOTS:
        test = paired_t_test(current, pilot, base, "validation_top1")
        if not test["seeds"]:
            continue
        noise = validation_noise([r for r in current if r["row"] == base])
        if asks == "doubling":
            verdict = ("converged" if test["mean"] < 0.003 else "not converged") + \
                " (doubling must add under 0.3)"
        elif abs(test["mean"]) <= 2 * noise:
            verdict = f"no measurable difference from the reference's {asks}"
        else:
            verdict = f"the reference's {asks} " + ("helps" if test["mean"] > 0 else
                                                    "hurts")
        pilots.append(f"- {pilot} - {base}: validation top-1 {_points(test['mean'])} "
                      f"points over {test['seeds']} seed(s), chance alone "
                      f"±{100 * noise:.2f}: {verdict}.")
    if pilots:
        lines += ["", "Pilots (validation top-1, never test; chance alone: the binomial "
                  "standard error of a difference on the same validation images, sqrt(2 "
                  "p (1 - p) / n); a noise, smoothing or EMA pilot counts only beyond "
                  "twice it):", *pilots]
    lines += ["", "| paired difference (points of test top-1) | seeds | mean ± std | t | "
              "p (two-sided) | finding (p < 0.05) |", "|---|---|---|---|---|---|"]
    for a, b in COMPARISONS:
        test = paired_t_test(current, a, b)
        if not test["seeds"]:
            continue
        spread = f" ± {100 * test['std']:.2f}" if test["std"] is not None else " (one run)"
        t = f"{test['t']:.2f}" if test["t"] is not None else ""
        p = f"{test['p']:.3f}" if test["p"] is not None else ""
        lines.append(f"| {a} - {b} | {test['seeds']} | {_points(test['mean'])}{spread} | "
                     f"{t} | {p} | {'yes' if test['finding'] else 'no'} |")
    commits = sorted({r["commit"] for r in current})
    machines = sorted({r["machine"] for r in current})
    lines += ["", f"Rendered by `python bench/converged.py --write` from "
              f"`bench/results/converged.jsonl`: {len(current)} runs on "
              f"{', '.join(machines) or '-'} from commit(s) {', '.join(commits) or '-'}."]
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.write:
        run_grid()
    block = render(read_jsonl(FLAGS.results))
    print(block)
    if FLAGS.write:
        write_results_block(BEGIN, END, block, FLAGS.results_md)


if __name__ == "__main__":
    app.run(main)
