"""Trains a supervised teacher end to end: subset, noise, fit, test, export."""

import time

from absl import logging

from nstudent import data, models
from nstudent.training.runs import finish_run, labeled_subset
from nstudent.training.steps import with_device_noise
from nstudent.training.supervised import compile_for_training, fit


def train_teacher(out_dir, info, train_split, test_split, model_config, input_config,
                  train_config, labels_per_class=0, seed=0):
    """Returns the metrics dict written to <out_dir>/metrics.json."""
    start = time.time()
    batch = input_config.batch_size
    labeled, unlabeled = labeled_subset(info, train_split, labels_per_class, seed, batch)
    logging.info("%d labeled and %d unlabeled training examples, %d classes, %d test.",
                 len(labeled), len(unlabeled), info.num_classes, len(test_split))
    steps = train_config.steps_per_epoch or len(labeled) // batch
    train_ds = data.train_dataset(train_split.dataset(labeled), info.num_classes,
                                  input_config, seed=seed)
    network = models.build_efficientnet(model_config)
    logging.info("EfficientNet-%s: %d parameters, %d px, %d blocks.", model_config.variant,
                 network.count_params(), model_config.resolved_image_size,
                 len(models.block_names(network)))
    model = with_device_noise(network, input_config, seed)
    compile_for_training(model, train_config, steps)
    jit = bool(model.jit_compile)
    history, epoch_seconds = fit(model, train_ds, steps, train_config.epochs,
                                 f"{out_dir}/logs")
    return finish_run(
        out_dir, network, model_config, info, test_split, input_config, start, history,
        epoch_seconds, batch, steps, {
            "stage": "teacher", "labeled_examples": int(len(labeled)),
            "unlabeled_examples": int(len(unlabeled)), "jit_compile": jit,
            "train_top1_last_epoch": float(history["top1"][-1])})
