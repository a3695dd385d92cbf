"""RESULTS.md: teacher, noisy student generations, a supervised model on all labels,
and every model's robustness before and after resolution fine-tuning.

  python bench/noisy_student_results.py --out=runs/bench_noisy_student [--write]

Runs tools/pipeline.py with flags/fashion_mnist_noisy_student.cfg (400 labels
per class, the rest unlabeled), a teacher of --teacher_epochs, --generations
students of --student_epochs each, fine-tuning of every generation at --finetune_resolution and the
corruption/FGSM evaluation; then the same architecture supervised on all
60,000 labels. Finished runs are reused. Prints one JSON line per model and
Markdown tables; --write puts them in RESULTS.md between the bench markers.
"""

import json
import os
import time

from absl import app, flags

from common import machine, read_metrics, run_tool, write_results_block

flags.DEFINE_string("out", "runs/bench_noisy_student", "Folder for the runs.")
flags.DEFINE_integer("generations", 2, "Student generations.")
flags.DEFINE_integer("teacher_epochs", 60, "Epochs of the teacher.")
flags.DEFINE_integer("student_epochs", 6, "Epochs of every student.")
flags.DEFINE_integer("finetune_resolution", 40, "Fine-tuning resolution (px); 0: none.")
flags.DEFINE_integer("robustness_examples", 2000, "Test images for corruptions and FGSM.")
flags.DEFINE_integer("supervised_epochs", 9, "Epochs of the all-label model.")
flags.DEFINE_bool("write", False, "Write the tables to RESULTS.md.")
FLAGS = flags.FLAGS
BEGIN, END = ("<!-- bench/noisy_student_results.py: begin -->",
              "<!-- bench/noisy_student_results.py: end -->")


def _row(name, m, images_seen):
    return {"bench": "noisy_student", "model": name, "labeled": m["labeled_examples"],
            "pseudo_labeled": m.get("pseudo_labeled_examples", 0), "epochs": m["epochs"],
            "steps": m["epochs"] * m["steps_per_epoch"], "images_seen": images_seen,
            "test_top1": round(m["test_top1"], 4), "test_top5": round(m["test_top5"], 4),
            "minutes": round(m["seconds_total"] / 60, 1), "parameters": m["parameters"],
            "backend": m["versions"]["backend"], **machine()}


def main(argv):
    from nstudent.export.atomic import read_json
    from nstudent.pipeline import results_table

    out = os.path.abspath(FLAGS.out)
    pipeline_out = os.path.join(out, f"pipeline_student_epochs_{FLAGS.student_epochs}")
    start = time.time()
    run_tool("pipeline.py", "--flagfile=flags/fashion_mnist_noisy_student.cfg",
             f"--generations={FLAGS.generations}", f"--epochs={FLAGS.teacher_epochs}",
             f"--student_epochs={FLAGS.student_epochs}",
             f"--finetune_resolution={FLAGS.finetune_resolution}", "--finetune_all",
             f"--robustness_examples={FLAGS.robustness_examples}",
             f"--out={pipeline_out}", *argv[1:])
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
    accuracy = "\n".join(lines)
    manifest = read_json(os.path.join(pipeline_out, "manifest.json"))["steps"]
    models = [dict(s, robustness=manifest.get(f"robustness_{name}", {}))
              for name, s in manifest.items()
              if s.get("stage") in ("teacher", "student", "finetune")]
    robustness = results_table(models)
    print(accuracy, robustness, sep="\n\n")
    print(f"pipeline wall time (this call): {pipeline_minutes:.1f} min")
    if FLAGS.write:
        r = rows[0]
        where = (f"Measured {time.strftime('%Y-%m-%d')} by `python bench/noisy_student_results.py"
                 f" --write` on {r['cpus']} {r['machine']} CPU cores, Keras backend "
                 f"{r['backend']}; {r['parameters']:,} parameters in every model; corruption "
                 f"and FGSM columns on {FLAGS.robustness_examples} test images spread over "
                 "the test split.")
        write_results_block(BEGIN, END, f"{accuracy}\n\n{robustness}\n\n{where}")


if __name__ == "__main__":
    app.run(main)
