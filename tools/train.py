"""Trains a teacher, or with --pseudo_labels a noisy student, and exports it.

  python tools/train.py --flagfile=flags/fashion_mnist_teacher.cfg --out=runs/teacher
  python tools/train.py --flagfile=flags/fashion_mnist_teacher.cfg \
      --pseudo_labels=runs/pseudo_labels --out=runs/student
  python tools/train.py ... --init_from_pretrained=runs/pretrain --ft_proj_selector=1
      (SimCLRv2 fine-tuning: see tools/pretrain.py)

Writes <out>/model.keras, <out>/saved_model/ (serving_default on uint8 images),
<out>/logs/ (TensorBoard), <out>/model_info.json and, last, <out>/metrics.json.
"""

import dataclasses

from absl import flags

from nstudent.startup import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports it
from nstudent import cli  # noqa: E402

cli.define_shared_flags()
flags.DEFINE_string("pseudo_labels", None, "Folder of pseudo-label shards "
                    "(tools/pseudo_label.py): train a noisy student on them and the "
                    "labeled subset.")
flags.DEFINE_string("out", None, "Output folder of the run.", required=True)
flags.DEFINE_bool("overwrite", False, "Train again even if <out> holds a finished run.")
cli.help_lists("data", "model", "train", "student", "distribution",
               names=("init_from_pretrained", "ft_proj_selector"))
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from nstudent import pseudo_labels, training

    if cli.already_finished(FLAGS.out, "train again"):
        return 0

    def stage():
        if FLAGS.pseudo_labels:  # the labeled subset and channels its teacher had
            cli.adopt_pseudo_label_settings(FLAGS.pseudo_labels)
        cli.setup_runtime()
        stage_data = cli.load_stage_data(unlabeled=True)
        model_config = cli.model_config(stage_data.info)
        input_config = cli.input_config(model_config.resolved_image_size)
        if FLAGS.pseudo_labels:
            train_config = cli.train_config()
            if FLAGS.student_steps:
                train_config = dataclasses.replace(train_config,
                                                   total_steps=FLAGS.student_steps)
            training.train_student(
                FLAGS.out, stage_data, pseudo_labels.load_pseudo_labels(FLAGS.pseudo_labels),
                model_config, input_config, train_config, cli.student_config())
        else:
            training.train_teacher(FLAGS.out, stage_data, model_config, input_config,
                                   cli.train_config(), FLAGS.init_weights,
                                   FLAGS.init_from_pretrained, FLAGS.ft_proj_selector)

    return cli.run_stage(stage, lambda: cli.validate_flags(
        multilabel=not FLAGS.init_from_pretrained))


if __name__ == "__main__":
    cli.main_of(main)
