"""Teacher accuracy on the default dataset with few and with all labels.

  python bench/teacher_accuracy.py --out=runs/bench_teacher [--full_epochs=8]
  python bench/teacher_accuracy.py --runs=few --randaugment_impl=device --seed=1

Trains the teacher of flags/fashion_mnist_teacher.cfg twice (400 labels per
class, then all 60,000 labels), or reuses finished runs, and prints one JSON
line per run with test top-1/top-5 and seconds per epoch on this machine.
--randaugment_impl and --seed override the flagfile's (to compare noise).
"""

import json
import os

from absl import app, flags

from common import machine, read_metrics, run_tool

flags.DEFINE_string("out", "runs/bench_teacher", "Folder for the runs.")
flags.DEFINE_integer("labels_per_class", 400, "Labels per class of the few-label run.")
flags.DEFINE_integer("few_epochs", 60, "Epochs of the few-label run.")
flags.DEFINE_integer("full_epochs", 8, "Epochs of the all-label run.")
flags.DEFINE_list("runs", ["few", "full"], "Which runs: few (labels), full (all labels).")
flags.DEFINE_string("randaugment_impl", None, "Override the flagfile's implementation.")
flags.DEFINE_integer("seed", None, "Override the flagfile's seed.")
FLAGS = flags.FLAGS


def main(argv):
    runs = {"few": ("labels_%d" % FLAGS.labels_per_class, FLAGS.labels_per_class,
                    FLAGS.few_epochs),
            "full": ("labels_all", 0, FLAGS.full_epochs)}
    overrides = [f"--{name}={getattr(FLAGS, name)}" for name in ("randaugment_impl", "seed")
                 if getattr(FLAGS, name) is not None]
    for name, per_class, epochs in (runs[r] for r in FLAGS.runs):
        name += "".join("_" + o.split("=")[1] for o in overrides)
        out = os.path.join(FLAGS.out, name)
        run_tool("train.py", "--flagfile=flags/fashion_mnist_teacher.cfg",
                 f"--labels_per_class={per_class}", f"--epochs={epochs}",
                 f"--out={os.path.abspath(out)}", *overrides, *argv[1:])
        m = read_metrics(out)
        print(json.dumps({
            "bench": "teacher_accuracy", "run": name, "labeled": m["labeled_examples"],
            "epochs": m["epochs"], "test_top1": round(m["test_top1"], 4),
            "test_top5": round(m["test_top5"], 4),
            "seconds_per_epoch": round(m["seconds_per_epoch"], 1),
            "train_images_per_second": round(m["train_images_per_second"]),
            "parameters": m["parameters"], "image_size": m["model"]["image_size"],
            "randaugment_impl": m["input"]["randaugment_impl"],
            "backend": m["versions"]["backend"], **machine()}), flush=True)


if __name__ == "__main__":
    app.run(main)
