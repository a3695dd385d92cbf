"""Pseudo-labels the unlabeled images with a clean teacher; filters and balances them.

  python tools/pseudo_label.py --flagfile=flags/fashion_mnist_teacher.cfg \\
      --teacher=runs/teacher --out=runs/pseudo_labels [--shard_index=3 --num_shards=8]

The unlabeled images are --unlabeled_dataset, or else the --train_split examples
outside the labeled subset (--labels_per_class, --seed: use the teacher's
values). Each shard writes <out>/pseudo-0000i-of-0000n.tfrecord (encoded image,
soft label, confidence) and, last, its stats .json; complete shards are skipped
on a re-run.
"""

import os
import sys

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
from nstudent import cli  # noqa: E402

cli.define_shared_flags()
flags.DEFINE_string("teacher", None, "Teacher: a run folder, a .keras file or a "
                    "SavedModel folder.", required=True)
flags.DEFINE_string("out", None, "Output folder of the pseudo-label shards.", required=True)
flags.DEFINE_integer("num_shards", 1, "Shards the unlabeled images are split into.")
flags.DEFINE_integer("shard_index", -1, "The shard to label; -1: every shard, in turn.")
flags.DEFINE_bool("overwrite", False, "Label shards again even when complete.")
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from nstudent import pseudo_labels


    def stage():
        if FLAGS.num_shards < 1:
            raise ValueError(f"--num_shards must be at least 1, got {FLAGS.num_shards}.")
        shards = (range(FLAGS.num_shards) if FLAGS.shard_index < 0
                  else [FLAGS.shard_index])
        cli.setup_runtime()
        stage_data = cli.load_stage_data(test=False, unlabeled=True)
        stats = pseudo_labels.pseudo_label(
            FLAGS.teacher, stage_data, cli.label_config(), FLAGS.out, shards,
            FLAGS.num_shards, overwrite=FLAGS.overwrite)
        written = sum(s["records"] for s in stats)
        logging.info("%d pseudo-labeled images in %d shard(s) in %s", written, len(stats),
                     FLAGS.out)

    return cli.run_stage(stage)


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
