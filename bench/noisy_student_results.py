"""RESULTS.md: teacher, two noisy student generations and a supervised model on all labels.

  python bench/noisy_student_results.py --out=runs/bench_noisy_student [--write]

Runs tools/pipeline.py with flags/fashion_mnist_noisy_student.cfg and two
generations (400 labels per class, the rest unlabeled), then the same
architecture supervised on all 60,000 labels, or reuses finished runs. Prints
one JSON line per model and a Markdown table; --write puts the table in
RESULTS.md.
"""

import json
import os
import time

from absl import app, flags

from common import ROOT, machine, read_metrics, run_tool

flags.DEFINE_string("out", "runs/bench_noisy_student", "Folder for the runs.")
flags.DEFINE_integer("generations", 2, "Student generations.")
flags.DEFINE_integer("supervised_epochs", 9, "Epochs of the all-label model (9 epochs of "
                     "60,000 images is about the images the pipeline trains on).")
flags.DEFINE_bool("write", False, "Write the table to RESULTS.md.")
FLAGS = flags.FLAGS


def _row(name, m, images_seen):
    return {"bench": "noisy_student", "model": name, "labeled": m["labeled_examples"],
            "pseudo_labeled": m.get("pseudo_labeled_examples", 0), "epochs": m["epochs"],
            "steps": m["epochs"] * m["steps_per_epoch"], "images_seen": images_seen,
            "test_top1": round(m["test_top1"], 4), "test_top5": round(m["test_top5"], 4),
            "minutes": round(m["seconds_total"] / 60, 1), "parameters": m["parameters"],
            "backend": m["versions"]["backend"], **machine()}


def main(argv):
    out = os.path.abspath(FLAGS.out)
    pipeline_out = os.path.join(out, "pipeline")
    start = time.time()
    run_tool("pipeline.py", "--flagfile=flags/fashion_mnist_noisy_student.cfg",
             f"--generations={FLAGS.generations}", f"--out={pipeline_out}", *argv[1:])
    pipeline_minutes = (time.time() - start) / 60
    supervised_out = os.path.join(out, "supervised_all_labels")
    run_tool("train.py", "--flagfile=flags/fashion_mnist_teacher.cfg", "--labels_per_class=0",
             f"--epochs={FLAGS.supervised_epochs}", f"--out={supervised_out}", *argv[1:])

    rows = []
    for g in range(FLAGS.generations + 1):
        m = read_metrics(os.path.join(pipeline_out, f"gen{g}"))
        per_step = 128 if g == 0 else 128 * (1 + m["unlabeled_ratio"])
        name = "teacher (gen0)" if g == 0 else f"noisy student gen{g}"
        rows.append(_row(name, m, m["epochs"] * m["steps_per_epoch"] * per_step))
    m = read_metrics(supervised_out)
    rows.append(_row("supervised, all labels", m, m["epochs"] * m["steps_per_epoch"] * 128))
    for r in rows:
        print(json.dumps(r), flush=True)

    lines = [
        "| model | labels | pseudo-labeled | epochs | steps | images seen | test top-1 | "
        "test top-5 | minutes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['labeled']:,} | {r['pseudo_labeled']:,} | "
                     f"{r['epochs']} | {r['steps']:,} | {r['images_seen']:,} | "
                     f"{r['test_top1']:.4f} | {r['test_top5']:.4f} | {r['minutes']} |")
    table = "\n".join(lines)
    print(table)
    print(f"pipeline wall time (this call): {pipeline_minutes:.1f} min")
    if FLAGS.write:
        _write_results(table, rows)


def _write_results(table, rows):
    """Replaces the generated block of RESULTS.md, keeping the hand-written text."""
    path = os.path.join(ROOT, "RESULTS.md")
    begin, end = "<!-- bench/noisy_student_results.py: begin -->", \
        "<!-- bench/noisy_student_results.py: end -->"
    text = open(path).read() if os.path.exists(path) else f"# Results\n\n{begin}\n{end}\n"
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    r = rows[0]
    block = (f"{begin}\n{table}\n\nMeasured {time.strftime('%Y-%m-%d')} on {r['cpus']} "
             f"{r['machine']} CPU cores, Keras backend {r['backend']}; "
             f"{r['parameters']:,} parameters in every model.\n{end}")
    with open(path + ".tmp", "w") as f:
        f.write(head + block + tail)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    app.run(main)
