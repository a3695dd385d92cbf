"""RESULTS.md figures for the multi-label noisy student on 2 x 2 Fashion-MNIST mosaics:
the teacher, the masked student (confident positives and negatives, the rest left
out of the loss), and two students on baseline pseudo-labels: (a) every entry
thresholded at 0.5, nothing masked; (b) the teacher's top class only.

  nohup python bench/multilabel_results.py > runs/multilabel.log 2>&1 &   # resumable
  python bench/multilabel_results.py --write                               # the table
  python bench/multilabel_results.py --labels_per_class=200 --teacher_steps=3360
                      # fewer labels: its own results file and RESULTS.md block

Per seed: bench/mosaics.py writes the set (the seed draws the mosaics), one teacher
trains on the labeled mosaics (--validation_fraction held out for its per-class
thresholds), and per row pseudo_label.py labels the unlabeled mosaics and a student
of the teacher's size trains from scratch on them for --student_steps; a control
trains the teacher's recipe, supervised, for the same steps. The
pseudo-labels' precision and recall are counted against the mosaics' hidden labels
(unlabeled_labels.csv, which no tool reads). Finished rows go to --results
(committed); a rerun skips them.
"""

import collections
import csv
import datetime
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags, logging
from common import (
    ROOT,
    machine,
    mean_std,
    paired,
    read_jsonl,
    read_metrics,
    run_tool,
    write_results_block,
)

flags.DEFINE_string("out", "runs/multilabel", "Folder for the data and runs (not "
                    "committed).")
flags.DEFINE_string("results", None, "Finished rows, one JSON line each (committed); "
                    "default bench/results/multilabel.jsonl, with --labels_per_class=K "
                    "multilabel_kK.jsonl.")
flags.DEFINE_integer("labels_per_class", 0, "K > 0: teacher and students see only the "
                     "labeled mosaics picked until every class has K positives (a "
                     "table of its own, runs in seedS_kK/); 0: all of them.")
flags.DEFINE_integer("teacher_steps", 0, "Teacher steps; 0: --teacher_epochs.")
flags.DEFINE_list("seeds", ["0"], "Seeds (each: its own mosaics and teacher).")
flags.DEFINE_integer("train_mosaics", 2000, "Labeled train mosaics.")
flags.DEFINE_integer("test_mosaics", 2000, "Test mosaics.")
flags.DEFINE_integer("unlabeled_mosaics", 20000, "Unlabeled mosaics.")
# 120 epochs: validation mAP 0.605 / 0.762 / 0.801 after 40 / 80 / 120 (seed 0)
flags.DEFINE_integer("teacher_epochs", 120, "Teacher epochs (28 steps each).")
flags.DEFINE_integer("student_steps", 3360, "Steps of every student (and the control): "
                     "the teacher's 120 epochs of 28.")
flags.DEFINE_list("rows", ["masked", "all_at_half", "top_class"], "Rows to run after "
                  "the teacher, in this order; 'control' (the teacher's recipe for "
                  "--student_steps); a row name may end in _large (the student, or the "
                  "control, at --large_width: masked_large, control_large), then in "
                  "_long (at --long_steps instead: masked_long, masked_large_long), then "
                  "in _gen2 (labeled by the row without _gen2, which must run first: "
                  "masked_large_gen2).")
flags.DEFINE_integer("long_steps", 6720, "Steps of the _long rows: twice the teacher's.")
# 0.75 of B0's width at depth 0.5: 2.2x the teacher's parameters, the paper's "larger"
flags.DEFINE_float("large_width", 0.75, "--width_scale of the _large rows' student.")
flags.DEFINE_list("flags", [], "More flags for every tool call (tests: a smaller model).")
flags.DEFINE_bool("write", False, "Only render the RESULTS.md table from --results.")
flags.DEFINE_string("results_md", os.path.join(ROOT, "RESULTS.md"), "Where --write goes.")
FLAGS = flags.FLAGS


def results_path():
    name = (f"multilabel_k{FLAGS.labels_per_class}.jsonl" if FLAGS.labels_per_class
            else "multilabel.jsonl")
    return FLAGS.results or os.path.join(ROOT, "bench", "results", name)


def markers():
    """The RESULTS.md block of this table: one per --labels_per_class."""
    which = f" --labels_per_class={FLAGS.labels_per_class}" if FLAGS.labels_per_class else ""
    return (f"<!-- bench/multilabel_results.py{which}: begin -->",
            f"<!-- bench/multilabel_results.py{which}: end -->")

VALIDATION, IMAGE_SIZE = 0.1, 56
# the main job's teacher recipe at the mosaics' 56 px; a tenth of the labeled mosaics
# held out for the thresholds; what the pad exposes is black like the background
TEACHER = ["--task=multilabel", "--labels_file=labels.csv",
           "--flagfile=flags/fashion_mnist_teacher.cfg", "--channels=1",
           "--labels_per_class=0", f"--validation_fraction={VALIDATION}",
           f"--image_size={IMAGE_SIZE}",
           "--crop_padding=4", "--batch_size=64"]
# (row, what RESULTS.md calls it, pseudo-labeling flags); "control" (the
# teacher's recipe for --student_steps) runs between them, as --rows orders
ROWS = (
    ("masked", "masked: positive at p >= 0.7, negative at p <= 0.05, the rest masked",
     ["--multilabel_entries=confident"]),
    ("all_at_half", "(a) every entry at 0.5, nothing masked",
     ["--multilabel_entries=all"]),
    ("top_class", "(b) the top class only (single-label pseudo-labels)",
     ["--multilabel_entries=top_class"]),
    # the thresholds meet: every entry confident, its target the teacher's p (the
    # multi-label form of the single-label recipe's soft targets on nearly every image)
    ("soft_all", "every entry soft (the teacher's p), nothing masked",
     ["--multilabel_entries=confident", "--positive_threshold=0.5",
      "--negative_threshold=0.4999"]),
)
STUDENT = ["--unlabeled_ratio=3", "--warmup_epochs=1", "--backup_every_steps=200"]


def write_mosaics(root, seed):
    if not os.path.exists(os.path.join(root, "mosaics.json")):
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "mosaics.py"),
                        f"--out={root}", f"--seed={seed}",
                        f"--train_mosaics={FLAGS.train_mosaics}",
                        f"--test_mosaics={FLAGS.test_mosaics}",
                        f"--unlabeled_mosaics={FLAGS.unlabeled_mosaics}"],
                       cwd=ROOT, check=True)
    return json.load(open(os.path.join(root, "mosaics.json")))


def pseudo_label_scores(labels_dir, data_root, names):
    """Micro precision and recall of the pseudo-labels' positives (target >= 0.5 where
    not masked) against the hidden labels over every unlabeled mosaic, and the share
    of entries masked."""
    from nstudent import data
    from nstudent.pseudo_labels import read_records

    split = data.load_unlabeled(f"folder:{data_root}/unlabeled", 1)
    with open(os.path.join(data_root, "unlabeled_labels.csv")) as f:
        hidden = {row[0]: set(filter(None, row[1].split(";")))
                  for row in list(csv.reader(f))[1:]}
    truth = np.array([[n in hidden[os.path.basename(p)] for n in names]
                      for p in split.paths])
    called = np.zeros_like(truth)
    masked = 0
    for r in read_records(labels_dir):
        mask = np.asarray(r["mask"]) > 0
        called[int(r["index"])] = mask & (np.asarray(r["label"]) >= 0.5)
        masked += int((~mask).sum())
    tp = int((called & truth).sum())
    return {"pseudo_precision": round(tp / max(int(called.sum()), 1), 4),
            "pseudo_recall": round(tp / max(int(truth.sum()), 1), 4),
            "pseudo_positives_per_image": round(float(called.sum(1).mean()), 4),
            "hidden_labels_per_image": round(float(truth.sum(1).mean()), 4),
            "masked_share": round(masked / truth.size, 4)}


def _train(out, *args):
    """train.py unless `out` holds a finished run; (metrics, CPU seconds of this call's
    run or None when it had finished before, the run's own minutes)."""
    cpu = _children_cpu()
    ran = not os.path.exists(os.path.join(out, "metrics.json"))
    if ran:
        run_tool("train.py", *args, f"--out={out}")
    metrics = read_metrics(out)
    return (metrics, round(_children_cpu() - cpu, 1) if ran else None,
            round(metrics["seconds_total"] / 60, 2))


def _children_cpu():
    t = os.times()
    return t.children_user + t.children_system


def _record(line):
    line.update(settings={"train_mosaics": FLAGS.train_mosaics,
                          "test_mosaics": FLAGS.test_mosaics,
                          "unlabeled_mosaics": FLAGS.unlabeled_mosaics,
                          "teacher_epochs": FLAGS.teacher_epochs,
                          "teacher_steps": FLAGS.teacher_steps,
                          "labels_per_class": FLAGS.labels_per_class,
                          "student_steps": FLAGS.student_steps,
                          "large_width": FLAGS.large_width, "flags": FLAGS.flags},
                machine=machine(), date=datetime.date.today().isoformat())
    with open(results_path(), "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


def _scores(metrics):
    return {"test_map": round(metrics["test_map"], 4),
            "test_micro_f1": round(metrics["test_micro_f1"], 4),
            "test_macro_f1": round(metrics["test_macro_f1"], 4),
            "steps": metrics["optimizer_iterations"]}


# the paper's student noise where it keeps every label: RandAugment's colour operations
# at magnitude 9 (its 27 of 30), a shift of at most 8 of 56 px (every cell keeps at least
# 20 of its 28 px in view), dropout 0.5 before the classifier
NOISY = ["--randaugment_magnitude=9", "--crop_padding=8", "--dropout=0.5"]


SUFFIXES = ("_large", "_noisy", "_long", "_gen2")  # in this order after the kind


def parse_row(row):
    """"<kind>[_large][_noisy][_long][_gen2]" -> (kind, the suffixes it has)."""
    present = set()
    for suffix in reversed(SUFFIXES):
        if row.endswith(suffix):
            row = row[:-len(suffix)]
            present.add(suffix)
    return row, present


def row_variant(row):
    """A row -> (kind, steps, student flags, labeler): _large trains at --large_width,
    _noisy with NOISY, _long for --long_steps instead of --student_steps, _gen2 a
    second generation of the same student, labeled by the first (the row without
    _gen2, which must come before it) instead of the teacher."""
    kind, present = parse_row(row)
    labeler = f"student_{row[:-len('_gen2')]}" if "_gen2" in present else "teacher"
    steps = FLAGS.long_steps if "_long" in present else FLAGS.student_steps
    model = ([f"--width_scale={FLAGS.large_width}"] if "_large" in present else []) + (
        list(NOISY) if "_noisy" in present else [])
    return kind, steps, model, labeler


def validation_map(run, data_root, seed):
    """mAP on the labeled mosaics the run held out (--validation_fraction): what the
    recipes are chosen by, never the test split. Newer runs record it in metrics.json;
    older ones are scored here from their exported model."""
    recorded = read_metrics(run).get("validation_map")
    if recorded is not None:
        return round(float(recorded), 4)
    from nstudent import data, evaluation
    from nstudent.evaluation.calibration import predicted_logits
    from nstudent.evaluation.multilabel import mean_average_precision

    info, splits = data.load(f"folder:{data_root}/labeled", ("train",), channels=1,
                             task="multilabel", labels_file="labels.csv")
    held_out = data.StageData(info, splits["train"], seed=seed,
                              labels_per_class=FLAGS.labels_per_class,
                              validation_fraction=VALIDATION).validation_indices
    classifier = evaluation.load_classifier(run, prefer="keras", multilabel=True)
    size = json.load(open(os.path.join(run, "model_info.json")))["image_size"]
    batches = data.eval_dataset(splits["train"].dataset(held_out), info.num_classes,
                                data.InputConfig.for_evaluation(size, 256))
    logits, labels = predicted_logits(classifier.logits, batches)
    return round(float(mean_average_precision(logits, labels)["map"]), 4)


def run_seed(seed, done):
    root = os.path.abspath(os.path.join(FLAGS.out, f"seed{seed}"))
    data_root = os.path.join(root, "mosaics")  # every K's runs share the seed's set
    if FLAGS.labels_per_class:
        root += f"_k{FLAGS.labels_per_class}"
    summary = write_mosaics(data_root, seed)
    base = [*TEACHER, f"--dataset=folder:{data_root}/labeled",
            f"--unlabeled_dataset=folder:{data_root}/unlabeled", f"--seed={seed}",
            f"--labels_per_class={FLAGS.labels_per_class}", *FLAGS.flags]
    teacher = os.path.join(root, "teacher")
    t, cpu, minutes = _train(teacher, *base, f"--train_steps={FLAGS.teacher_steps}"
                             if FLAGS.teacher_steps else f"--epochs={FLAGS.teacher_epochs}")
    if ("teacher", seed) not in done:
        _record({"row": "teacher", "seed": seed, **_scores(t),
                 "validation_map": validation_map(teacher, data_root, seed),
                 "cpu_seconds": cpu,
                 "minutes": minutes, "labels_per_image": summary["sets"]["train"][
                     "labels_per_image"]})
    # the class order of the records: the folder's (sorted), not the mosaics' own
    names = json.load(open(os.path.join(teacher, "model_info.json")))["dataset"][
        "class_names"]
    entries = {row: entry_flags for row, _, entry_flags in ROWS}
    for row in FLAGS.rows:
        if (row, seed) in done:
            continue
        kind, steps, model, labeler = row_variant(row)
        if kind == "control":  # the teacher's recipe for the students' step count
            c, cpu, minutes = _train(os.path.join(root, row), *base, *model,
                                     f"--train_steps={steps}")
            _record({"row": row, "seed": seed, **_scores(c),
                     "validation_map": validation_map(os.path.join(root, row), data_root,
                                                      seed),
                     "teacher_map": round(t["test_map"], 4), "cpu_seconds": cpu,
                     "minutes": minutes})
            continue
        labels = os.path.join(root, f"labels_{kind}" if labeler == "teacher" else
                              f"labels_{row}")
        if not os.path.exists(os.path.join(labels, "stats.json")):
            if not os.path.exists(os.path.join(root, labeler, "metrics.json")):
                raise SystemExit(f"{row} is labeled by {labeler}: run its row first.")
            run_tool("pseudo_label.py", *base, *entries[kind],
                     f"--teacher={os.path.join(root, labeler)}", f"--out={labels}")
        scores = pseudo_label_scores(labels, data_root, names)
        student = os.path.join(root, f"student_{row}")
        s, cpu, minutes = _train(student, *base, *STUDENT, *model,
                                 f"--pseudo_labels={labels}", f"--student_steps={steps}")
        _record({"row": row, "seed": seed, **_scores(s),
                 "validation_map": validation_map(student, data_root, seed), **scores,
                 "labeled_by": labeler,
                 "teacher_map": round(t["test_map"], 4), "cpu_seconds": cpu,
                 "minutes": minutes})


def render(results):
    latest = {(r["row"], r["seed"]): r for r in results}
    by_row = collections.defaultdict(list)
    for (row, _), r in sorted(latest.items()):
        by_row[row].append(r)
    rows = list(latest.values())

    def ms(values, digits=4):
        mean, std = mean_std(values)
        return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")

    base = {"teacher": "teacher (labeled mosaics only)",
            "control": "control: the teacher's recipe for the students' steps",
            **{row: text for row, text, _ in ROWS}}

    def described(row):
        rs = by_row[row]
        kind, present = parse_row(row)
        text = base[kind]
        if "_large" in present:
            text += f", at width {rs[0]['settings'].get('large_width', 0.75)} (larger)"
        if "_noisy" in present:
            text += ", the paper's noise (magnitude 9, 8 px shifts, dropout 0.5)"
        if "_long" in present:
            text += f", {rs[0]['steps']:,} steps"
        return text + (", generation 2 (labeled by generation 1, the row above)"
                       if "_gen2" in present else "")

    lines = ["| row | runs | test mAP | validation mAP | micro F1 | macro F1 | "
             "pseudo-label recall | pseudo-label precision | masked entries | "
             "mAP - teacher (paired) |", "|---" * 10 + "|"]
    order = ["teacher"] + [
        f"{kind}{large}{noisy}{long}{gen2}"
        for kind in ["control"] + [r for r, _, _ in ROWS] for long in ("", "_long")
        for large in ("", "_large") for noisy in ("", "_noisy") for gen2 in ("", "_gen2")]
    for row in order:
        rs = by_row.get(row)
        if not rs:
            continue
        pseudo = ["-"] * 3
        diff = "-"
        if row != "teacher":
            if "pseudo_recall" in rs[0]:
                pseudo = [ms([r[k] for r in rs], 3) for k in
                          ("pseudo_recall", "pseudo_precision", "masked_share")]
            d, mean, std, counts = paired(rows, row, "teacher", key="test_map")
            if d:
                diff = (f"{100 * mean:+.2f}" + ("" if std is None else
                                                 f" ± {100 * std:.2f}") + " points"
                        + ("" if std is None else " (counts)" if counts else
                           " (does not count)"))
        validation = [r["validation_map"] for r in rs if "validation_map" in r]
        lines.append(f"| {described(row)} | {len(rs)} | {ms([r['test_map'] for r in rs])}"
                     f" | {ms(validation) if validation else '-'}"
                     f" | {ms([r['test_micro_f1'] for r in rs])} | "
                     f"{ms([r['test_macro_f1'] for r in rs])} | " + " | ".join(pseudo)
                     + f" | {diff} |")
    any_row = next(iter(latest.values()))
    s = any_row["settings"]
    lines.append("")
    k = s.get("labels_per_class", 0)
    lines.append(f"{s['train_mosaics']} labeled mosaics"
                 + (f" (of which those picked until every class has {k} positives)"
                    if k else "") + f", {s['unlabeled_mosaics']} unlabeled and "
                 f"{s['test_mosaics']} test mosaics per seed; teacher "
                 + (f"{s['teacher_steps']} steps" if s.get("teacher_steps") else
                    f"{s['teacher_epochs']} epochs")
                 + f", students {s['student_steps']} steps; "
                 f"{any_row['machine']['cpus']} CPUs, {any_row['date']}. "
                 "Rendered by `python bench/multilabel_results.py --write`.")
    return "\n".join(lines)


def main(argv):
    del argv
    results = read_jsonl(results_path())
    if not FLAGS.write:
        for seed in (int(s) for s in FLAGS.seeds):
            done = {(r["row"], r["seed"]) for r in read_jsonl(results_path())}
            run_seed(seed, done)
        results = read_jsonl(results_path())
    if not results:
        logging.info("No finished rows in %s yet.", results_path())
        return
    table = render(results)
    print(table)
    if FLAGS.write:
        write_results_block(*markers(), table, FLAGS.results_md)


if __name__ == "__main__":
    app.run(main)
