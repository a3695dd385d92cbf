"""RESULTS.md, SimCLRv2 section: on the default dataset at 1% (60 per class) and 10%
(600 per class) of the labels, with the same encoder and budget:

  supervised-only teacher | SimCLRv2 pretrain + fine-tune | + self-distillation |
  + noisy student on top

and the pretrained encoder's kNN and linear-probe accuracy (with a randomly
initialised encoder's kNN as the floor).

  python bench/simclr_results.py --out=runs/bench_simclr [--write]

Every stage runs as its tool in its own process (flags/fashion_mnist_simclr.cfg);
finished runs are reused. One contrastive pretraining (labels unused except by the
online probe, which sees the 1% subset) serves both label fractions. Prints one
JSON line per model and a Markdown table; --write puts it in RESULTS.md.
"""

import json
import os
import time

from absl import app, flags

from common import machine, read_metrics, run_tool, write_results_block

flags.DEFINE_string("out", "runs/bench_simclr", "Folder for the runs.")
flags.DEFINE_list("labels_per_class", ["60", "600"], "Label fractions (per class).")
flags.DEFINE_integer("teacher_steps", 900, "Steps of every teacher (batch 64 at 60 "
                     "per class, 128 above).")
flags.DEFINE_integer("student_epochs", 2, "Epochs of the distilled and noisy students.")
flags.DEFINE_float("distill_temperature", 1.0, "Distillation temperature.")
flags.DEFINE_bool("write", False, "Write the table to RESULTS.md.")
FLAGS = flags.FLAGS
CONFIG = "--flagfile=flags/fashion_mnist_simclr.cfg"
BEGIN, END = ("<!-- bench/simclr_results.py: begin -->",
              "<!-- bench/simclr_results.py: end -->")


def _teacher_flags(per_class):
    batch = 64 if per_class < 200 else 128
    steps_per_epoch = per_class * 10 // batch
    epochs = max(1, round(FLAGS.teacher_steps / steps_per_epoch))
    return [f"--labels_per_class={per_class}", f"--batch_size={batch}",
            f"--epochs={epochs}"]


def _student_flags(per_class):
    return [f"--labels_per_class={per_class}", "--batch_size=128", "--unlabeled_ratio=3",
            f"--epochs={FLAGS.student_epochs}", "--warmup_epochs=0.2", "--init_from_teacher"]


def encoder_knn(pretrain_dir, per_class):
    """kNN top-1 of the pretrained encoder and of a random one, bank = the labeled
    subset at `per_class`."""
    import keras

    from nstudent import data, models
    from nstudent.models import HeadConfig, build_pretrain_network
    from nstudent.pretraining import knn_accuracy
    from nstudent.pretraining.stage import embed

    info, splits = data.load("fashion_mnist", ("train", "test"))
    stage = data.StageData(info, splits["train"], splits["test"], per_class, 0)
    model_info = json.load(open(os.path.join(pretrain_dir, "model_info.json")))
    config = models.ModelConfig.from_dict(model_info["model"])
    size = model_info["image_size"]
    trained = keras.saving.load_model(os.path.join(pretrain_dir, "model.keras"))
    keras.utils.set_random_seed(0)  # the same random encoder every call
    random = build_pretrain_network(config, HeadConfig(**model_info["head"]))
    config_in = data.InputConfig(image_size=size, batch_size=512)
    result = {}
    for name, network in (("pretrained", trained), ("random_init", random)):
        bank, bank_labels = embed(network, stage.labeled(), config_in)
        test, test_labels = embed(network, stage.test.dataset(), config_in)
        result[name] = knn_accuracy(bank, bank_labels, test, test_labels,
                                    info.num_classes, 20)
    return result


def main(argv):
    out = os.path.abspath(FLAGS.out)
    start = time.time()
    pretrain = os.path.join(out, "pretrain")
    run_tool("pretrain.py", CONFIG, f"--out={pretrain}", *argv[1:])
    p = read_metrics(pretrain)
    rows = []
    for per_class in (int(v) for v in FLAGS.labels_per_class):
        base = os.path.join(out, f"labels_{per_class}")
        runs = {k: os.path.join(base, k) for k in (
            "supervised", "finetuned", "finetuned_encoder_only", "distill_labels",
            "distilled", "ns_labels", "noisy_student")}
        run_tool("train.py", CONFIG, *_teacher_flags(per_class),
                 f"--out={runs['supervised']}", *argv[1:])
        run_tool("train.py", CONFIG, *_teacher_flags(per_class),
                 f"--init_from_pretrained={pretrain}", f"--out={runs['finetuned']}",
                 *argv[1:])
        # the control: the encoder alone (the supervised model's size), no head layer
        run_tool("train.py", CONFIG, *_teacher_flags(per_class), "--ft_proj_selector=0",
                 f"--init_from_pretrained={pretrain}",
                 f"--out={runs['finetuned_encoder_only']}", *argv[1:])
        t = FLAGS.distill_temperature  # SimCLRv2: every unlabeled image, no filter
        run_tool("pseudo_label.py", CONFIG, f"--labels_per_class={per_class}",
                 f"--teacher={runs['finetuned']}", f"--temperature={t}",
                 "--min_confidence=0", f"--out={runs['distill_labels']}", *argv[1:])
        run_tool("train.py", CONFIG, *_student_flags(per_class),
                 f"--pseudo_labels={runs['distill_labels']}", f"--distill_temperature={t}",
                 "--labeled_loss_weight=0", "--randaugment_layers=0",
                 f"--out={runs['distilled']}", *argv[1:])
        run_tool("pseudo_label.py", CONFIG, f"--labels_per_class={per_class}",
                 f"--teacher={runs['distilled']}", f"--out={runs['ns_labels']}", *argv[1:])
        run_tool("train.py", CONFIG, *_student_flags(per_class),
                 f"--pseudo_labels={runs['ns_labels']}", f"--out={runs['noisy_student']}",
                 *argv[1:])
        knn = encoder_knn(pretrain, per_class)
        for name, key in (("supervised only", "supervised"),
                          ("pretrain + fine-tune, encoder only (selector 0)",
                           "finetuned_encoder_only"),
                          ("SimCLRv2 pretrain + fine-tune (selector 1)", "finetuned"),
                          ("+ self-distillation", "distilled"),
                          ("+ noisy student", "noisy_student")):
            m = read_metrics(runs[key])
            rows.append({"bench": "simclr", "labels_per_class": per_class, "model": name,
                         "test_top1": round(m["test_top1"], 4),
                         "test_top5": round(m["test_top5"], 4), "epochs": m["epochs"],
                         "steps": m["epochs"] * m["steps_per_epoch"],
                         "minutes": round(m["seconds_total"] / 60, 1),
                         "parameters": m["parameters"], "knn_pretrained": knn["pretrained"],
                         "knn_random_init": knn["random_init"], **machine()})
    for r in rows:
        print(json.dumps(r), flush=True)
    lines = ["| labels | model | parameters | test top-1 | test top-5 | steps | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['labels_per_class'] * 10:,} | {r['model']} | "
                     f"{r['parameters']:,} | {r['test_top1']:.4f} | "
                     f"{r['test_top5']:.4f} | {r['steps']:,} | {r['minutes']} |")
    encoder = ["| labels (kNN bank) | kNN top-1, pretrained | kNN top-1, random init | "
               "online linear probe top-1 |", "|---|---|---|---|"]
    for per_class in sorted({r["labels_per_class"] for r in rows}):
        r = next(r for r in rows if r["labels_per_class"] == per_class)
        probe = f"{p['linear_eval_top1']:.4f}" if per_class == p["data"][
            "labels_per_class"] else "-"
        encoder.append(f"| {per_class * 10:,} | {r['knn_pretrained']:.4f} | "
                       f"{r['knn_random_init']:.4f} | {probe} |")
    where = (f"Measured {time.strftime('%Y-%m-%d')} by `python bench/simclr_results.py"
             f"{' --write' if FLAGS.write else ''}` on {os.cpu_count()} CPU cores, one run "
             f"each. Pretraining: {p['epochs']} epochs x {p['steps_per_epoch']} steps of "
             f"{p['input']['batch_size']} images in 2 views, "
             f"{p['seconds_total'] / 60:.1f} min; this call {(time.time() - start) / 60:.1f} min.")
    block = "\n".join(lines) + "\n\n" + "\n".join(encoder) + "\n\n" + where
    print(block)
    if FLAGS.write:
        write_results_block(BEGIN, END, block)


if __name__ == "__main__":
    app.run(main)
