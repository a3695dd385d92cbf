"""Pseudo-labels the unlabeled images with a clean teacher; one global balance selects.

  python tools/pseudo_label.py --flagfile=flags/fashion_mnist_teacher.cfg \\
      --teacher=runs/teacher --out=runs/pseudo_labels

Two phases, both by default. --phase=label: the teacher labels shard
--shard_index of --num_shards (all shards when -1) into <out>/labels/, a chunk
(--label_chunk_size images) at a time; a killed shard resumes at its first
missing chunk. Shards can run on several machines sharing <out>. --phase=select:
once every shard is labeled, K and each class's confidence cut-off come from all
of them, and <out>/pseudo-*.tfrecord (shuffled, duplicates stored once with a
count) and <out>/stats.json are written. With --phase=all and one shard index,
selection runs when that shard was the last one missing.

The unlabeled images are --unlabeled_dataset, or else the --train_split examples
outside the labeled subset. What defines the teacher (--channels, and the labeled
subset: --dataset, --labels_per_class, --seed, --validation_fraction) comes from its
run folder: a flag set to another value is refused, an unset one takes the teacher's.
"""

import os

from absl import flags, logging

from nstudent.startup import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports it
from nstudent import cli  # noqa: E402
from nstudent.errors import InputError, MissingInput  # noqa: E402

cli.define_shared_flags()
flags.DEFINE_string("teacher", None, "Teacher: a run folder, a .keras file or a "
                    "SavedModel folder.", required=True)
flags.DEFINE_string("out", None, "Output folder of the pseudo-labels.", required=True)
flags.DEFINE_enum("phase", "all", ["all", "label", "select"],
                  "label: label shards; select: balance over all shards and write the "
                  "set; all: both.")
flags.DEFINE_integer("num_shards", 1, "Shards the unlabeled images are split into.")
flags.DEFINE_integer("shard_index", -1, "The shard to label; -1: every shard, in turn.")
flags.DEFINE_bool("overwrite", False, "Label and select again even when done.")
cli.help_lists("data", "pseudo_label", "distribution",
               names=("precision", "calibration", "validation_fraction"))
FLAGS = flags.FLAGS


def check_flags():
    if FLAGS.num_shards < 1:
        raise InputError(f"--num_shards must be at least 1, got {FLAGS.num_shards}.")
    if not -1 <= FLAGS.shard_index < FLAGS.num_shards:
        raise InputError(f"--shard_index={FLAGS.shard_index} is outside [0, "
                         f"{FLAGS.num_shards}) (or -1: every shard).")
    if not os.path.exists(FLAGS.teacher):
        raise MissingInput(f"--teacher: no model at {FLAGS.teacher!r}.")
    cli.adopt_teacher_settings(FLAGS.teacher)


def main(argv):
    del argv
    from nstudent import pseudo_labels

    def stage():
        check_flags()
        shards = (range(FLAGS.num_shards) if FLAGS.shard_index < 0
                  else [FLAGS.shard_index])
        cli.setup_runtime()
        stage_data = cli.load_stage_data(test=False, unlabeled=True)
        stats = pseudo_labels.pseudo_label(
            FLAGS.teacher, stage_data, cli.label_config(), FLAGS.out, shards,
            FLAGS.num_shards, overwrite=FLAGS.overwrite, phase=FLAGS.phase)
        if stats is not None:
            logging.info("%d pseudo-labeled records (%d distinct images) in %s",
                         stats["records"], stats["distinct_images"], FLAGS.out)
        else:
            missing = pseudo_labels.missing_shards(FLAGS.out, FLAGS.num_shards)
            logging.info("Labeled. %s", "Every shard is labeled; select with --phase=select."
                         if not missing else f"Shards still to label: "
                         f"{', '.join(map(str, missing))} of {FLAGS.num_shards}.")

    return cli.run_stage(
        stage, validate=lambda: cli.validate_flags(trains=False, multilabel=True))


if __name__ == "__main__":
    cli.main_of(main)
