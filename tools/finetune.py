"""Fine-tunes a generation at a higher test resolution, shallow layers frozen, no
augmentation; exports it to <run>/finetuned_<resolution>/.

  python tools/finetune.py --flagfile=flags/fashion_mnist_noisy_student.cfg \\
      --run=runs/fashion_mnist/gen1 --finetune_resolution=48
"""


from absl import flags, logging

from nstudent.startup import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports it
from nstudent import cli  # noqa: E402
from nstudent.errors import InputError  # noqa: E402

cli.define_shared_flags()
flags.DEFINE_string("run", None, "Run folder to fine-tune (with model.keras).",
                    required=True)
flags.DEFINE_bool("overwrite", False, "Fine-tune again even if the output is finished.")
cli.help_lists("data", "train", "finetune", "distribution")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from nstudent import export
    from nstudent.training.finetune import finetune, finetuned_dir

    def stage():
        if FLAGS.finetune_resolution <= 0:
            raise InputError("Pass --finetune_resolution (pixels).")
        out = finetuned_dir(FLAGS.run, FLAGS.finetune_resolution)
        if export.is_finished(out) and not FLAGS.overwrite:
            logging.info("%s is already finished; pass --overwrite to redo it.", out)
            return
        cli.adopt_teacher_settings(FLAGS.run)  # the labeled subset it trained on
        cli.setup_runtime()
        finetune(FLAGS.run, out, cli.load_stage_data(), FLAGS.finetune_resolution,
                 cli.input_config(FLAGS.finetune_resolution), cli.finetune_train_config(),
                 FLAGS.freeze_blocks)

    return cli.run_stage(stage)


if __name__ == "__main__":
    cli.main_of(main)
