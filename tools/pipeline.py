"""The whole noisy student loop: teacher, then for every generation pseudo-labels
and a student that becomes the next teacher. Re-running the same command resumes.

  python tools/pipeline.py --flagfile=flags/fashion_mnist_noisy_student.cfg \\
      --out=runs/fashion_mnist --generations=2 --models=b0,b0,b1

  python tools/pipeline.py ... --pretrain     # SimCLRv2 pretraining, then the loop

Writes <out>/pretrain/ (with --pretrain), <out>/gen0/ (teacher),
<out>/pseudo_labels_for_genK/, <out>/genK/ (each run folder with saved_model/,
model.keras, metrics.json), <out>/manifest.json,
and at the end prints a table and saves <out>/accuracy.png.
"""

import dataclasses
import os

from absl import flags, logging

from nstudent.startup import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports it
from nstudent import cli  # noqa: E402
from nstudent.errors import InputError  # noqa: E402

cli.define_shared_flags()
flags.DEFINE_string("out", None, "Output folder of the run.", required=True)
flags.DEFINE_integer("generations", 2, "Student generations after the teacher (gen0).")
flags.DEFINE_list("models", [], "EfficientNet variant per generation, gen0 first (e.g. "
                  "b0,b0,b1); the last one repeats. Empty: --model for all.")
flags.DEFINE_list("width_scales", [], "--width_scale per generation, gen0 first (e.g. "
                  "0.5,0.75 for students with ~2x the teacher's parameters); the last one "
                  "repeats. Empty: --width_scale for all.")
flags.DEFINE_list("depth_scales", [], "--depth_scale per generation, gen0 first; the last "
                  "one repeats. Empty: --depth_scale for all.")
flags.DEFINE_integer("student_epochs", 0, "Epochs of each student (one epoch = one pass "
                     "over the pseudo-labeled images); 0: --epochs.")
flags.DEFINE_float("student_warmup_epochs", -1.0, "Warm-up epochs of each student; "
                   "<0: --warmup_epochs.")
flags.DEFINE_float("student_learning_rate", 0.0, "Peak learning rate of each student; "
                   "0: --learning_rate.")
flags.DEFINE_integer("num_shards", 1, "Shards of each pseudo-labeling step, run in turn "
                     "(tools/pseudo_label.py labels shards on many machines).")
flags.DEFINE_bool("finetune_all", False, "With --finetune_resolution: fine-tune every "
                  "generation, not only the last.")
flags.DEFINE_list("corruptions", [], "Evaluate every model under these corruptions at "
                  "severities 1-5 ('all' or names; see tools/evaluate.py).")
flags.DEFINE_list("fgsm_epsilons", [], "Evaluate every model under FGSM at these step "
                  "sizes (fractions of the pixel range, e.g. 2/255,8/255).")
flags.DEFINE_bool("pretrain", False, "SimCLRv2 first: contrastive pretraining on every "
                  "labeled and unlabeled image (<out>/pretrain/, the --pretrain_* and "
                  "projection-head flags), then gen0 fine-tuned from it with "
                  "--ft_proj_selector head layers, then the noisy student generations.")
flags.DEFINE_integer("robustness_examples", 0, "Test images for the corruption and FGSM "
                     "evaluation; 0: all.")
cli.help_lists(*cli.GROUPS)
FLAGS = flags.FLAGS


PIPELINE_RANGES = (
    ("generations", 0, True, None, False),
    ("student_epochs", 0, True, None, False),  # 0: --epochs
    ("student_learning_rate", 0, True, None, False),  # 0: --learning_rate
    ("num_shards", 1, True, None, False),
    ("robustness_examples", 0, True, None, False),  # 0: the whole test split
)


def per_generation(values, default):
    """One value per generation, gen0 first: the list's last repeats; empty: `default`."""
    values = list(values) or [default]
    return (values + values[-1:] * FLAGS.generations)[:FLAGS.generations + 1]


def model_names():
    """The variant of each generation, gen0 first."""
    return per_generation(FLAGS.models, FLAGS.model)


def _scales(name, default):
    try:
        values = [float(v) for v in getattr(FLAGS, name)]
    except ValueError:
        raise InputError(f"--{name} takes numbers, got {','.join(getattr(FLAGS, name))}.")
    for v in values:
        cli.check_range(name, v, 0, False, None, False)
    return per_generation(values, default)


def generation_models(base):
    """The ModelConfig of each generation, gen0 first: variant, width and depth."""
    return [base.replace(variant=n, width_scale=w, depth_scale=d) for n, w, d in zip(
        model_names(), _scales("width_scales", base.width_scale),
        _scales("depth_scales", base.depth_scale))]


def corruption_names():
    from nstudent import evaluation

    return (evaluation.CORRUPTIONS if FLAGS.corruptions == ["all"]
            else tuple(FLAGS.corruptions))


def check_flags():
    """The shared flags and the pipeline's own, all before any data is read."""
    from nstudent import evaluation, models

    cli.validate_flags(multilabel=True)
    cli.check_flag_ranges(PIPELINE_RANGES)
    if FLAGS.task == "multilabel":
        for name in ("pretrain", "finetune_resolution"):
            if getattr(FLAGS, name):
                raise InputError(f"--{name} is not for --task=multilabel in this version "
                                 "(the teacher, pseudo-labels, students and robustness "
                                 "are).")
    unknown = [m for m in FLAGS.models or [FLAGS.model] if m not in models.VARIANTS]
    if unknown:
        raise InputError(f"--models: unknown variant(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(models.VARIANTS)}.")
    unknown = [c for c in corruption_names() if c not in evaluation.CORRUPTIONS]
    if unknown:
        raise InputError(f"--corruptions: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(evaluation.CORRUPTIONS)}.")
    for e in FLAGS.fgsm_epsilons:
        evaluation.parse_epsilon(e)
    configs = generation_models(cli.model_config())
    if FLAGS.finetune_resolution:
        from nstudent.training.finetune import min_resolution

        blocks = min(len(models.stage_plan(c)) for c in configs)
        if FLAGS.freeze_blocks > blocks:
            raise InputError(f"--freeze_blocks={FLAGS.freeze_blocks}, but the models have "
                             f"{blocks} blocks.")
        smallest = max(min_resolution(c) for c in configs)
        if FLAGS.finetune_resolution < smallest:
            raise InputError(f"--finetune_resolution={FLAGS.finetune_resolution} is below "
                             f"the models' minimum of {smallest} px.")
    from nstudent.training.student import check_distillation

    check_distillation(FLAGS.distill_temperature, FLAGS.labeled_loss_weight,
                       {"hard": FLAGS.hard_labels, "temperature": FLAGS.temperature})
    if FLAGS.init_from_teacher and len({(c.variant, c.width_scale, c.depth_scale)
                                        for c in configs}) > 1:
        raise InputError("--init_from_teacher needs every generation at the teacher's "
                         "architecture; --models, --width_scales or --depth_scales change "
                         "it. Drop one or the other.")


def make_plan(info):
    from nstudent import evaluation
    from nstudent.pipeline import Plan

    base = cli.model_config(info)
    corruptions = corruption_names()
    pretrain = None
    if FLAGS.pretrain:
        size = base.resolved_image_size
        pretrain = {"input_config": cli.pretrain_input_config(size),
                    "train_config": cli.pretrain_train_config(),
                    "config": cli.contrastive_config(size)}
    teacher_train = cli.train_config()
    student_train = cli.student_schedule(teacher_train, FLAGS.student_epochs,
                                         FLAGS.student_learning_rate,
                                         FLAGS.student_warmup_epochs)
    return Plan(
        models=tuple(generation_models(base)),
        input_config=cli.input_config(base.resolved_image_size),
        teacher_train=teacher_train, student_train=student_train,
        label=cli.label_config(), dataset=FLAGS.dataset,
        labels_per_class=FLAGS.labels_per_class, seed=FLAGS.seed,
        unlabeled_dataset=FLAGS.unlabeled_dataset or "",
        init_weights=FLAGS.init_weights or "",
        # the students start from scratch (or the teacher); --init_weights is gen0's
        student=dataclasses.replace(cli.student_config(), init_weights=None),
        num_shards=FLAGS.num_shards,
        finetune_resolution=FLAGS.finetune_resolution, finetune_all=FLAGS.finetune_all,
        finetune_train=cli.finetune_train_config(), freeze_blocks=FLAGS.freeze_blocks,
        corruptions=corruptions,
        fgsm_epsilons=tuple(evaluation.parse_epsilon(e) for e in FLAGS.fgsm_epsilons),
        robustness_examples=FLAGS.robustness_examples, pretrain=pretrain,
        ft_proj_selector=FLAGS.ft_proj_selector)


def main(argv):
    del argv
    from nstudent import pipeline

    rows = []

    def stage():
        cli.setup_runtime()
        stage_data = cli.load_stage_data(unlabeled=True)
        rows.extend(pipeline.run_pipeline(FLAGS.out, stage_data, make_plan(stage_data.info)))
        skipped = stage_data.skipped_files()
        if skipped:
            logging.warning("Skipped %d unreadable images in all (first: %s).",
                            len(skipped), ", ".join(skipped[:3]))

    code = cli.run_stage(stage, validate=check_flags)
    if code:
        return code
    plot = os.path.join(FLAGS.out, "accuracy.png")  # mAP for a multi-label run
    pipeline.plot_accuracy(rows, plot)
    print(pipeline.results_table(rows))
    first = rows[0]
    last = [r for r in rows if r["stage"] != "finetune"][-1]
    key, name = ("test_map", "mAP") if "test_map" in first else ("test_top1", "top-1")
    print(f"teacher (gen0) test {name} {first[key]:.4f} -> student "
          f"(gen{last['generation']}) {last[key]:.4f} "
          f"({100 * (last[key] - first[key]):+.2f} points); plot: {plot}")
    logging.info("Pipeline finished: %s", FLAGS.out)
    return 0


if __name__ == "__main__":
    cli.main_of(main)
