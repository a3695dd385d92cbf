"""RESULTS.md figures for pseudo-labels a user can trust: one cut-off on the raw
softmax (today's default), the same on the calibrated softmax, and per-class
cut-offs from a precision target, with out-of-domain images in the unlabeled pool.

  nohup python bench/trust_results.py > runs/trust.log 2>&1 &   # resumable rows
  python bench/trust_results.py --write                         # the table

The class-mismatch protocol (Oliver et al., 2018): two Fashion-MNIST classes
(--held_out_classes) are left out of the labels and the classifier, and their
training images join the unlabeled pool. Per seed the data is written once as
image folders: <out>/seedS/data/labeled/{train,test}/<8 classes>/ (the train
split's --labels_per_class images per class, picked by the seed, of which
--validation_fraction are held out for calibration and the cut-offs) and a flat
<out>/seedS/data/unlabeled/ of every other train image, named <index>_<class>.png so
the hidden class can be counted. One teacher per seed (flags/fashion_mnist_teacher.cfg,
--calibration=temperature), one pseudo-label set per cut-off, one student per set
(the same recipe for all: from scratch, the teacher's size, --student_steps).
Finished rows go to --results (committed); a rerun skips them.
"""

import collections
import datetime
import json
import os
import re

import numpy as np
from absl import app, flags, logging
from common import (
    ROOT,
    ToolRefused,
    paired,
    read_jsonl,
    read_metrics,
    run_tool,
    write_results_block,
)

flags.DEFINE_string("out", "runs/trust", "Folder for the runs (not committed).")
flags.DEFINE_string("results", os.path.join(ROOT, "bench", "results", "trust.jsonl"),
                    "Finished rows, one JSON line each (committed).")
flags.DEFINE_list("seeds", ["0"], "Seeds (each: its own labeled subset and teacher).")
flags.DEFINE_integer("labels_per_class", 100, "Labeled train images per kept class.")
flags.DEFINE_float("validation_fraction", 0.2, "Of those, held out for calibration and "
                   "the precision cut-offs.")
flags.DEFINE_list("held_out_classes", ["shirt", "bag"], "Classes left out of the labels "
                  "and the classifier; their train images are out-of-domain unlabeled.")
flags.DEFINE_integer("teacher_epochs", 60, "Teacher epochs.")
flags.DEFINE_integer("student_steps", 1000, "Steps of every student.")
flags.DEFINE_float("min_precision", 0.9, "The precision target row.")
flags.DEFINE_list("flags", [], "More flags for every tool call (tests: a smaller model).")
flags.DEFINE_integer("max_train_images", 0, "Use only this many train images (tests); 0: all.")
flags.DEFINE_bool("write", False, "Only render the RESULTS.md table from --results.")
flags.DEFINE_string("results_md", os.path.join(ROOT, "RESULTS.md"), "Where --write goes.")
FLAGS = flags.FLAGS
BEGIN, END = ("<!-- bench/trust_results.py: begin -->", "<!-- bench/trust_results.py: end -->")

TEACHER = ["--flagfile=flags/fashion_mnist_teacher.cfg", "--channels=1",
           "--labels_per_class=0", "--calibration=temperature"]
# (row, what RESULTS.md calls it, pseudo-labeling flags)
CUTS = (
    ("raw_0.3", "0.3 on the raw softmax (today)",
     ["--min_confidence=0.3", "--calibration=none"]),
    ("calibrated_0.3", "0.3 on the calibrated softmax",
     ["--min_confidence=0.3", "--calibration=temperature"]),
    ("precision", "precision target per class",
     ["--min_confidence=0.3", "--calibration=temperature", "--min_precision={p}"]),
)
STUDENT = ["--unlabeled_ratio=3", "--warmup_epochs=1", "--backup_every_steps=200"]


def _safe(name):
    return re.sub(r"[^A-Za-z0-9]+", "-", name)


def write_data(root, seed):
    """The seed's folders (see the module docstring); returns the unlabeled files'
    hidden classes in the order the unlabeled source indexes them (sorted paths)."""
    import tensorflow as tf

    from nstudent import data

    done = os.path.join(root, "classes.json")
    if os.path.exists(done):
        return json.load(open(done))
    info, splits = data.load("fashion_mnist", ("train", "test"), channels=1)
    names = list(info.class_names)
    unknown = [c for c in FLAGS.held_out_classes if c not in names]
    if unknown:
        raise app.UsageError(f"--held_out_classes: unknown {unknown}; classes: {names}.")
    kept = [c for c in names if c not in FLAGS.held_out_classes]
    rng = np.random.default_rng(seed)
    train_labels = splits["train"].labels
    count = FLAGS.max_train_images or len(train_labels)
    labeled = set()
    for c in kept:
        members = np.flatnonzero(train_labels[:count] == names.index(c))
        labeled.update(rng.choice(members, FLAGS.labels_per_class, replace=False).tolist())

    def write(split, indices, folder_of):
        for image, label, i in splits[split].dataset(np.asarray(indices), with_index=True) \
                .as_numpy_iterator():
            path = folder_of(int(i), names[int(label)])
            if path:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(tf.io.encode_png(image).numpy())

    write("train", sorted(labeled), lambda i, c: os.path.join(
        root, "labeled", "train", _safe(c), f"{i:05d}.png"))
    test = np.arange(len(splits["test"].labels))[:max(count // 6, 1)]
    write("test", test, lambda i, c: None if c in FLAGS.held_out_classes else os.path.join(
        root, "labeled", "test", _safe(c), f"{i:05d}.png"))
    rest = [i for i in range(count) if i not in labeled]
    write("train", rest, lambda i, c: os.path.join(root, "unlabeled",
                                                   f"{i:05d}_{_safe(c)}.png"))
    files = sorted(os.listdir(os.path.join(root, "unlabeled")))
    classes = [f.split("_", 1)[1][:-4] for f in files]
    with open(done, "w") as f:
        json.dump(classes, f)
    return classes


def _tool(name, out, *args):
    if not os.path.exists(os.path.join(out, "metrics.json" if name == "train.py"
                                       else "stats.json")):
        run_tool(name, *args, f"--out={out}")


def run_seed(seed, done):
    root = os.path.abspath(os.path.join(FLAGS.out, f"seed{seed}"))
    hidden = write_data(os.path.join(root, "data"), seed)
    base = [*TEACHER, f"--dataset=folder:{root}/data/labeled",
            f"--unlabeled_dataset=folder:{root}/data/unlabeled", f"--seed={seed}",
            f"--validation_fraction={FLAGS.validation_fraction}", *FLAGS.flags]
    teacher = os.path.join(root, "teacher")
    _tool("train.py", teacher, *base, f"--epochs={FLAGS.teacher_epochs}")
    t = read_metrics(teacher)
    names = json.load(open(os.path.join(teacher, "model_info.json")))["dataset"][
        "class_names"]
    for row, _, cut_flags in CUTS:
        if (row, seed) in done:
            continue
        cut = [f.format(p=FLAGS.min_precision) for f in cut_flags]
        labels = os.path.join(root, f"labels_{row}")
        student = os.path.join(root, f"student_{row}")
        # A cut-off that keeps nothing (labeling) or too few images (the student) is an
        # outcome of the row, recorded with the stage that refused, never a crash: which
        # stage refuses a toy teacher's cut-off hangs on the CPU's numerics.
        stage = "pseudo_label"
        try:
            _tool("pseudo_label.py", labels, *base, *cut, f"--teacher={teacher}")
            stats = json.load(open(os.path.join(labels, "stats.json")))
            kept = {"images_kept": stats["distinct_images"], "records": stats["records"],
                    **_kept(labels, hidden, names)}
            stage = "student"
            _tool("train.py", student, *base, *cut, *STUDENT, f"--pseudo_labels={labels}",
                  f"--student_steps={FLAGS.student_steps}", *FLAGS.flags)
            s = read_metrics(student)
            trained = {"student_top1": round(s["test_top1"], 4),
                       "student_steps": s["optimizer_iterations"]}
        except ToolRefused as e:
            logging.warning("%s refused %s, seed %d: %s", stage, row, seed, e.message)
            if stage == "pseudo_label":
                kept = {"images_kept": 0, "records": 0, "kept_out_of_domain": 0,
                        "kept_accuracy": None}
            trained = {"student_top1": None, "student_steps": 0, "refused_stage": stage,
                       "refused": e.message}
        line = {"row": row, "seed": seed, **kept,
                "teacher_top1": round(t["test_top1"], 4),
                "teacher_ece": round(t["calibration"]["test_before"]["ece"], 4),
                "teacher_ece_calibrated": round(t["calibration"]["test_after"]["ece"], 4),
                "temperature": round(t["calibration"]["temperature"], 4),
                "test_images": t["calibration"]["test_after"]["examples"],
                **trained,
                "settings": {"labels_per_class": FLAGS.labels_per_class,
                             "held_out_classes": FLAGS.held_out_classes,
                             "validation_fraction": FLAGS.validation_fraction,
                             "teacher_epochs": FLAGS.teacher_epochs,
                             "student_steps": FLAGS.student_steps,
                             "min_precision": FLAGS.min_precision, "flags": FLAGS.flags},
                "date": datetime.date.today().isoformat()}
        with open(FLAGS.results, "a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


def _kept(labels_dir, hidden, names):
    """Distinct kept images: how many of the held-out classes, and the accuracy of the
    pseudo-labels of the others against their hidden classes."""
    from nstudent.pseudo_labels import read_records

    seen = {}
    for r in read_records(labels_dir):
        seen[int(r["index"])] = int(r["class"])
    ood = sum(hidden[i] in map(_safe, FLAGS.held_out_classes) for i in seen)
    inside = [(i, c) for i, c in seen.items() if hidden[i] not in map(
        _safe, FLAGS.held_out_classes)]
    right = sum(_safe(names[c]) == hidden[i] for i, c in inside)
    return {"kept_out_of_domain": int(ood),
            "kept_accuracy": round(right / max(len(inside), 1), 4)}


def render(results):
    latest = {(r["row"], r["seed"]): r for r in results}
    rows = collections.defaultdict(list)
    for (row, _), r in sorted(latest.items()):
        rows[row].append(r)
    lines = ["| cut-off | seeds | images kept | accuracy of kept pseudo-labels (hidden "
             "labels) | kept from held-out classes | student test top-1 |",
             "|---|---|---|---|---|---|"]

    def stat(rs, key, digits=4):
        v = np.array([r[key] for r in rs if r.get(key) is not None], np.float64)
        text = "" if not len(v) else f"{v.mean():.{digits}f}" + (
            f" ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else "")
        return text.strip()

    def refusals(rs):
        """Seeds whose cut-off kept nothing (labeling refused) or too few images for a
        student's batch (the student refused): how many, at which stage, and why."""
        by_stage = collections.defaultdict(list)
        for r in rs:
            if r.get("student_top1") is None:
                # lines before refused_stage existed: only the student could refuse
                by_stage[r.get("refused_stage", "student")].append(
                    r.get("refused", r.get("student_refused", "")))
        parts = []
        for stage, messages in sorted(by_stage.items()):
            why = messages[0].removeprefix("error:").strip().rstrip(".")
            parts.append(f"{stage} refused in {len(messages)} of {len(rs)}" + (
                f": {why}" if why else ""))
        return f" ({'; '.join(parts)})" if parts else ""

    for row, what, _ in CUTS:
        rs = rows.get(row, [])
        if not rs:
            lines.append(f"| {what} | 0 | not run yet | | | |")
            continue
        lines.append(f"| {what} | {len(rs)} | {stat(rs, 'images_kept', 0)} | "
                     f"{stat(rs, 'kept_accuracy')} | {stat(rs, 'kept_out_of_domain', 0)} | "
                     f"{(stat(rs, 'student_top1') + refusals(rs)).strip()} |")
    lines.append("")
    lines.append("Paired by seed (each cut-off minus the raw 0.3 row, points; counts: the "
                 "mean is beyond twice its standard error):")
    for key, what in (("student_top1", "student test top-1"),
                      ("kept_accuracy", "accuracy of the kept pseudo-labels")):
        parts = []
        for row, name, _ in CUTS[1:]:
            diffs, mean, std, counts = paired(list(latest.values()), row, CUTS[0][0], key)
            if diffs:
                parts.append(f"{name} {100 * mean:+.2f}" + (
                    f" ± {100 * std:.2f} ({len(diffs)} seeds, "
                    f"{'counts' if counts else 'does not count'})" if std is not None
                    else " (1 seed)"))
        if parts:
            lines.append(f"- {what}: " + "; ".join(parts) + ".")
    teachers = {r["seed"]: r for r in latest.values()}.values()
    for r in teachers:
        lines.append("")
        lines.append(f"Seed {r['seed']}: teacher test top-1 {r['teacher_top1']:.4f}, ECE "
                     f"{r['teacher_ece']:.4f} -> {r['teacher_ece_calibrated']:.4f} at T="
                     f"{r['temperature']:.3f} ({r['test_images']} test images).")
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.write:
        os.makedirs(os.path.dirname(FLAGS.results), exist_ok=True)
        done = {(r["row"], r["seed"]) for r in read_jsonl(FLAGS.results)}
        for seed in FLAGS.seeds:
            logging.info("=== seed %s ===", seed)
            run_seed(int(seed), done)
    block = render(read_jsonl(FLAGS.results))
    print(block)
    if FLAGS.write:
        write_results_block(BEGIN, END, block, FLAGS.results_md)


if __name__ == "__main__":
    app.run(main)
