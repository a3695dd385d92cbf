"""Trains a supervised teacher end to end: subset, noise, fit, test, export."""

import platform
import time

import keras
import numpy as np
from absl import logging

from nstudent import data, export, models
from nstudent.training.supervised import compile_for_training, fit


def versions():
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version(),
            "numpy": np.__version__}


def train_teacher(out_dir, info, train_split, test_split, model_config, input_config,
                  train_config, labels_per_class=0, seed=0):
    """Returns the metrics dict written to <out_dir>/metrics.json."""
    start = time.time()
    labeled, unlabeled = data.split_labeled(
        train_split.labels, info.num_classes, labels_per_class, seed)
    batch = input_config.batch_size
    if len(labeled) < batch:
        raise data.DataError(f"Only {len(labeled)} labeled examples for batch size {batch}; "
                             "lower --batch_size.")
    logging.info("%d labeled and %d unlabeled training examples, %d classes, %d test.",
                 len(labeled), len(unlabeled), info.num_classes, len(test_split))
    steps = train_config.steps_per_epoch or len(labeled) // batch
    train_ds = data.train_dataset(train_split.dataset(labeled), info.num_classes,
                                  input_config, seed=seed)
    test_ds = data.eval_dataset(test_split.dataset(), info.num_classes, input_config)

    model = models.build_efficientnet(model_config)
    logging.info("EfficientNet-%s: %d parameters, %d px, %d blocks.", model_config.variant,
                 model.count_params(), model_config.resolved_image_size,
                 len(models.block_names(model)))
    compile_for_training(model, train_config, steps)
    history, epoch_seconds = fit(model, train_ds, steps, train_config.epochs,
                                 f"{out_dir}/logs")
    steady = float(np.median(epoch_seconds[1:] or epoch_seconds))  # without tracing
    scores = model.evaluate(test_ds, verbose=0, return_dict=True)
    metrics = {
        "test_top1": float(scores["top1"]), "test_top5": float(scores["top5"]),
        "test_examples": len(test_split), "labeled_examples": int(len(labeled)),
        "unlabeled_examples": int(len(unlabeled)), "epochs": train_config.epochs,
        "steps_per_epoch": steps, "seconds_per_epoch": steady,
        "seconds_first_epoch": epoch_seconds[0],
        "train_images_per_second": steps * input_config.batch_size / steady,
        "train_top1_last_epoch": float(history["top1"][-1]),
        "parameters": int(model.count_params()), "dataset": info.name,
        "model": model_config.to_dict(), "versions": versions(),
        "jit_compile": bool(model.jit_compile),
    }
    metrics["seconds_total"] = time.time() - start
    export.write_run(out_dir, model, model_config, info, metrics)
    logging.info("Test top-1 %.4f, top-5 %.4f; wrote %s", metrics["test_top1"],
                 metrics["test_top5"], out_dir)
    return metrics
