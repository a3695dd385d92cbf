"""Trains a teacher with all noise on and exports it.

  python tools/train.py --flagfile=flags/fashion_mnist_teacher.cfg --out=runs/teacher

Writes <out>/model.keras, <out>/saved_model/ (serving_default on uint8 images),
<out>/logs/ (TensorBoard), <out>/model_info.json and, last, <out>/metrics.json.
"""

import os
import sys

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
from nstudent import cli  # noqa: E402
from nstudent.data import DataError  # noqa: E402

cli.define_data_flags()
cli.define_model_flags()
cli.define_train_flags()
flags.DEFINE_string("out", None, "Output folder of the run.", required=True)
flags.DEFINE_bool("overwrite", False, "Train again even if <out> holds a finished run.")
flags.adopt_module_key_flags(cli)  # --help lists the shared flags too
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from nstudent import export, training

    if export.is_finished(FLAGS.out) and not FLAGS.overwrite:
        logging.info("%s already holds a finished run (metrics.json); pass --overwrite "
                     "to train again.", FLAGS.out)
        return 0
    cli.setup_runtime()
    try:
        info, splits = cli.load_dataset()
        model_config = cli.model_config(info)
        training.train_teacher(
            FLAGS.out, info, splits[FLAGS.train_split], splits[FLAGS.test_split],
            model_config, cli.input_config(model_config.resolved_image_size),
            cli.train_config(), FLAGS.labels_per_class, FLAGS.seed)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
