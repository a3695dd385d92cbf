"""Fine-tuning at a higher test resolution (FixRes, as the Noisy Student paper does).

Training with random crops makes objects look larger than at test time; a short
fine-tune at the test resolution, without augmentation and with the shallow
layers frozen, closes the gap. Frozen layers keep their batch-norm statistics
too (Keras runs a non-trainable BatchNormalization in inference mode).
"""

import dataclasses
import os

from absl import logging

from nstudent import data, models
from nstudent.errors import InputError, MissingInput
from nstudent.evaluation import load_classifier
from nstudent.training.runs import StageRun, images_only
from nstudent.training.supervised import compile_for_training

STEM_LAYERS = ("rescale", "stem_conv", "stem_bn", "stem_activation")


def finetuned_dir(run_dir, resolution):
    return os.path.join(run_dir, f"finetuned_{resolution}")


def min_resolution(model_config):
    """The total stride: below it the deepest stages only see padding."""
    strides = model_config.stem_stride * 2 ** sum(
        1 for _, block in models.stage_plan(model_config) if block.strides == 2)
    return strides


def default_frozen_blocks(network):
    """All blocks but those of the last stage: only the last stage and head train."""
    names = models.block_names(network)
    last_stage = names[-1][:-1]  # "block7a" -> "block7"
    return sum(1 for n in names if not n.startswith(last_stage))


def freeze(network, num_blocks):
    """Freezes the stem and the first `num_blocks` blocks; returns the frozen layer names."""
    names = models.block_names(network)
    if not 0 <= num_blocks <= len(names):
        raise InputError(f"--freeze_blocks={num_blocks}, but the model has {len(names)} "
                         "blocks.")
    frozen_blocks = tuple(n + "_" for n in names[:num_blocks])
    frozen = []
    for layer in network.layers:
        if layer.name in STEM_LAYERS or layer.name.startswith(frozen_blocks):
            layer.trainable = False
            frozen.append(layer.name)
    return frozen


def finetune(run_dir, out_dir, stage_data, image_size, input_config, train_config,
             freeze_blocks=-1):
    """Fine-tunes the run's model at `image_size` on the labeled subset, without
    augmentation (the evaluation preprocessing at the new resolution); exports it."""
    info = stage_data.info
    teacher = load_classifier(run_dir, prefer="keras")
    if teacher.keras_model is None or not teacher.info:
        raise MissingInput(f"{run_dir!r} is not a run folder with model.keras and "
                                "model_info.json.")
    teacher.check_dataset(info)
    config = models.ModelConfig.from_dict(teacher.info["model"])
    smallest = min_resolution(config)
    if image_size < smallest:
        raise InputError(f"--finetune_resolution={image_size} is below the model's minimum of "
                         f"{smallest} px (its total stride).")
    if image_size <= config.resolved_image_size:
        logging.warning("Fine-tuning at %d px, not above the training resolution %d px.",
                        image_size, config.resolved_image_size)
    config = config.replace(image_size=image_size)
    run = StageRun("finetune", out_dir, stage_data, config, input_config, train_config)
    with run.scope():
        network = models.build_efficientnet(config)
        network.set_weights(teacher.keras_model.get_weights())
        blocks = default_frozen_blocks(network) if freeze_blocks < 0 else freeze_blocks
        frozen = freeze(network, blocks)
    logging.info("Fine-tuning %s at %d px: stem and %d of %d blocks frozen (%d layers), "
                 "%d trainable weights.", run_dir, image_size, blocks,
                 len(models.block_names(network)), len(frozen),
                 len(network.trainable_weights))

    batch = input_config.batch_size
    labeled = stage_data.labeled(batch, shuffle=True)
    count = len(stage_data.labeled_indices)
    steps = train_config.steps_per_epoch or count // batch
    # the source's evaluation preprocessing (square resize or centre crop) at the new size
    crop = teacher.crop_fraction
    input_config = dataclasses.replace(
        input_config, image_size=image_size, crop="random_resized" if crop else "pad",
        center_crop=crop or input_config.center_crop)

    def train_ds(start):
        # a new dataset: one object reshuffles from where its last iteration left off
        return data.train_dataset(stage_data.labeled(batch, shuffle=True), info.num_classes,
                                  input_config, augment=False, seed=stage_data.seed,
                                  num_examples=count, shuffled=True, start=start)

    run.input_config = input_config
    with run.scope():
        compile_for_training(network, train_config, steps)
    history, epoch_seconds = run.fit(network, network, train_ds, steps, {
        "source": os.path.abspath(run_dir), "frozen_blocks": blocks})
    return run.finish(
        network, labeled.map(images_only), history, epoch_seconds, batch, steps, {
            "source": os.path.abspath(run_dir),
            "resolution": image_size, "frozen_blocks": blocks, "frozen_layers": frozen,
            "labeled_examples": int(count),
            "jit_compile": bool(network.jit_compile)})
