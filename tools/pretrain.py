"""SimCLRv2 contrastive pretraining of an EfficientNet encoder with a projection head,
on the labeled and unlabeled images (labels unused, except by the online probe).

  python tools/pretrain.py --flagfile=flags/fashion_mnist_simclr.cfg --out=runs/pretrain
  python tools/train.py --flagfile=flags/fashion_mnist_simclr.cfg \\
      --init_from_pretrained=runs/pretrain --ft_proj_selector=1 --out=runs/finetuned

Writes <out>/model.keras (images -> embeddings, projections), <out>/saved_model/
(serving_default on uint8 images: embeddings and projections), <out>/logs/,
<out>/model_info.json (kind 'pretrain', the head) and, last, <out>/metrics.json with
the kNN and linear-probe accuracy of the encoder on the test split.
"""


from absl import flags

from nstudent.startup import import_tensorflow_quietly

import_tensorflow_quietly()  # before anything imports it
from nstudent import cli  # noqa: E402

cli.define_shared_flags()
flags.DEFINE_string("out", None, "Output folder of the run.", required=True)
flags.DEFINE_bool("overwrite", False, "Pretrain again even if <out> holds a finished run.")
cli.help_lists("data", "model", "train", "pretrain", "distribution")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if cli.already_finished(FLAGS.out, "pretrain again"):
        return 0

    def stage():
        from nstudent import pretraining

        cli.setup_runtime()
        stage_data = cli.load_stage_data(unlabeled=True)
        model_config = cli.model_config(stage_data.info)
        size = model_config.resolved_image_size
        pretraining.pretrain(FLAGS.out, stage_data, model_config,
                             cli.pretrain_input_config(size), cli.pretrain_train_config(),
                             cli.contrastive_config(size))

    return cli.run_stage(stage)


if __name__ == "__main__":
    cli.main_of(main)
