"""RESULTS.md figures for your-own-data features, on the embedded default dataset.

  python bench/own_data_results.py --experiment=fixres --out=runs/bench_fixres
  python bench/own_data_results.py --experiment=separate_source --out=runs/bench_separate

fixres: a teacher (flags/fashion_mnist_teacher.cfg, --teacher_epochs) trained with
  --crop=random_resized, tested at its training resolution (centre crop 0.875),
  at --test_resolution without fine-tuning, and after tools/finetune.py at
  --test_resolution (shallow layers frozen, no augmentation).
separate_source: --labels_per_class labels per class of the train split; the
  other train images are written once as a flat folder of PNGs and given as
  --unlabeled_dataset=folder:... Then the same pipeline with the unlabeled images
  taken from the train split itself, for comparison. Prints one JSON line per model.
"""

import json
import os
import time

from absl import app, flags

from common import machine, read_metrics, run_tool

flags.DEFINE_enum("experiment", "fixres", ["fixres", "separate_source"], "Which figures.")
flags.DEFINE_string("out", None, "Folder for the runs (finished runs are reused).",
                    required=True)
flags.DEFINE_integer("teacher_epochs", 40, "Teacher epochs.")
flags.DEFINE_integer("test_resolution", 40, "fixres: the higher test resolution.")
flags.DEFINE_list("more_test_resolutions", [], "fixres: further resolutions tested "
                  "without fine-tuning.")
flags.DEFINE_list("extra_flags", [], "fixres: more flags for train.py and finetune.py, "
                  "e.g. --stem_stride=1.")
flags.DEFINE_list("crop_scale", ["0.25", "1.0"], "fixres: random_resized area range.")
flags.DEFINE_integer("labels_per_class", 100, "separate_source: labels per class.")
flags.DEFINE_integer("student_epochs", 3, "separate_source: student epochs.")
FLAGS = flags.FLAGS
TEACHER = "--flagfile=flags/fashion_mnist_teacher.cfg"


def _evaluate(model, out_json, *flags_):
    run_tool("evaluate.py", f"--model={model}", "--dataset=fashion_mnist",
             f"--output={out_json}", *flags_)
    with open(out_json) as f:
        return json.load(f)


def _print(**row):
    print(json.dumps({**row, **machine()}), flush=True)


def fixres(out):
    teacher = os.path.join(out, "teacher_random_resized")
    crop = ["--crop=random_resized", f"--crop_scale={','.join(FLAGS.crop_scale)}",
            *FLAGS.extra_flags]
    run_tool("train.py", TEACHER, *crop, f"--epochs={FLAGS.teacher_epochs}",
             f"--out={teacher}")
    m = read_metrics(teacher)
    size, high = m["model"]["image_size"], FLAGS.test_resolution
    at_train = _evaluate(teacher, os.path.join(out, "eval_train_res.json"), "--prefer=keras")
    at_high = _evaluate(teacher, os.path.join(out, f"eval_{high}.json"), "--prefer=keras",
                        f"--image_size={high}")
    run_tool("finetune.py", TEACHER, *crop, f"--run={teacher}",
             f"--finetune_resolution={high}")
    tuned = read_metrics(os.path.join(teacher, f"finetuned_{high}"))
    more = [(r, _evaluate(teacher, os.path.join(out, f"eval_{r}.json"), "--prefer=keras",
                          f"--image_size={r}")["top1"])
            for r in map(int, FLAGS.more_test_resolutions)]
    rows = [("trained", size, at_train["top1"], m["seconds_total"]),
            ("no fine-tuning", high, at_high["top1"], 0.0),
            *[("no fine-tuning", r, top1, 0.0) for r, top1 in more],
            ("fine-tuned (frozen shallow layers, no augmentation)", high,
             tuned["test_top1"], tuned["seconds_total"])]
    for name, res, top1, seconds in rows:
        _print(bench="fixres", model=name, test_resolution=res, test_top1=round(top1, 4),
               train_resolution=size, crop_scale=FLAGS.crop_scale,
               teacher_epochs=m["epochs"], seconds=round(seconds, 1),
               stem_stride=m["model"]["stem_stride"])


def _write_unlabeled_folder(folder, labels_per_class, seed=0):
    """The train images outside the labeled subset, as one flat folder of PNGs."""
    import tensorflow as tf

    from nstudent import data

    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker):
        return
    info, splits = data.load("fashion_mnist", ("train",))
    _, unlabeled = data.split_labeled(splits["train"].labels, 10, labels_per_class, seed)
    os.makedirs(folder, exist_ok=True)
    ds = splits["train"].dataset(unlabeled, with_index=True).map(
        lambda x, y, i: (tf.io.encode_png(x), i), num_parallel_calls=tf.data.AUTOTUNE)
    for png, index in ds.as_numpy_iterator():
        with open(os.path.join(folder, f"{index:05d}.png"), "wb") as f:
            f.write(png)
    open(marker, "w").close()


def separate_source(out):
    folder = os.path.join(out, "unlabeled_pngs")
    _write_unlabeled_folder(folder, FLAGS.labels_per_class)
    common = ["--flagfile=flags/fashion_mnist_noisy_student.cfg", "--corruptions=",
              "--fgsm_epsilons=", f"--labels_per_class={FLAGS.labels_per_class}",
              f"--epochs={FLAGS.teacher_epochs}", f"--student_epochs={FLAGS.student_epochs}"]
    for name, extra in (("in_split", []),
                        ("separate_folder", [f"--unlabeled_dataset=folder:{folder}",
                                             "--channels=1"])):
        run_out = os.path.join(out, name)
        start = time.time()
        run_tool("pipeline.py", *common, *extra, f"--out={run_out}")
        minutes = (time.time() - start) / 60
        pl = json.load(open(os.path.join(run_out, "pseudo_labels_for_gen1", "stats.json")))
        for gen in ("gen0", "gen1"):
            m = read_metrics(os.path.join(run_out, gen))
            _print(bench="separate_source", unlabeled=name, model=gen,
                   labeled=m["labeled_examples"], test_top1=round(m["test_top1"], 4),
                   pseudo_labeled=m.get("pseudo_labeled_examples", 0),
                   unlabeled_images=pl["images_read"],
                   teacher_agreement=pl.get("agreement_with_dataset_labels"),
                   pipeline_minutes=round(minutes, 1))


def main(argv):
    del argv
    out = os.path.abspath(FLAGS.out)
    os.makedirs(out, exist_ok=True)
    (fixres if FLAGS.experiment == "fixres" else separate_source)(out)


if __name__ == "__main__":
    app.run(main)
