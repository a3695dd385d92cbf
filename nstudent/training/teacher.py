"""Trains a supervised teacher end to end: subset, noise, fit, statistics, test, export."""

from absl import logging

from nstudent import data, models
from nstudent.errors import InputError
from nstudent.training.from_pretrained import (apply_pretrained, finetune_config,
                                               pretrained_weights)
from nstudent.training.runs import StageRun, images_only
from nstudent.training.steps import with_device_noise
from nstudent.training.supervised import compile_for_training


def train_teacher(out_dir, stage_data, model_config, input_config, train_config,
                  init_weights=None, init_from_pretrained=None, ft_proj_selector=1):
    """Returns the metrics dict written to <out_dir>/metrics.json. With
    `init_from_pretrained` (a pretraining run) the network keeps its encoder and
    first `ft_proj_selector` head layers (SimCLRv2's fine-tuning)."""
    if init_from_pretrained:
        if init_weights:
            raise InputError("Pass --init_weights or --init_from_pretrained, not both.")
        model_config = finetune_config(init_from_pretrained, model_config, ft_proj_selector)
        start_weights = pretrained_weights(init_from_pretrained)  # outside the scope
    info, batch = stage_data.info, input_config.batch_size
    labeled = stage_data.labeled(batch, shuffle=True)
    count = len(stage_data.labeled_indices)
    logging.info("%d labeled and %d unlabeled training examples, %d classes, %d test.",
                 count, stage_data.unlabeled_count, info.num_classes, len(stage_data.test))
    train_config = train_config.resolve(count // batch)
    steps = train_config.steps_per_epoch
    run = StageRun("teacher", out_dir, stage_data, model_config, input_config, train_config)

    def train_ds(start):
        # a new dataset: one object reshuffles from where its last iteration left off
        return data.train_dataset(stage_data.labeled(batch, shuffle=True), info.num_classes,
                                  input_config, seed=stage_data.seed, num_examples=count,
                                  shuffled=True, start=start)

    with run.scope():
        model_config, network = models.build_with_weights(model_config, init_weights)
        if init_from_pretrained:
            apply_pretrained(network, start_weights, init_from_pretrained)
        run.model_config = model_config
        model = with_device_noise(network, input_config, stage_data.seed)
        compile_for_training(model, train_config, steps, info.task)
    logging.info("EfficientNet-%s: %d parameters, %d px, %d blocks.", model_config.variant,
                 network.count_params(), model_config.resolved_image_size,
                 len(models.block_names(network)))
    start = {"init_weights": init_weights, "init_from_pretrained": init_from_pretrained,
             "ft_proj_selector": ft_proj_selector if init_from_pretrained else None}
    history, epoch_seconds = run.fit(model, network, train_ds, steps, start)
    return run.finish(
        network, labeled.map(images_only), history, epoch_seconds, batch, steps, {
            "labeled_examples": int(count),
            "unlabeled_examples": int(stage_data.unlabeled_count),
            "jit_compile": bool(model.jit_compile), **start,
            "train_top1_last_epoch": float(history["top1"][-1]) if history.get("top1")
            else None})
