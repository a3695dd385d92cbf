"""What every training run shares: the labeled subset, test scores, metrics, export."""

import dataclasses
import platform
import time

import keras
import numpy as np
from absl import logging

from nstudent import data, export
from nstudent.training.supervised import classification_metrics


def versions():
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version(),
            "numpy": np.__version__}


def labeled_subset(info, train_split, labels_per_class, seed, batch_size):
    """(labeled, unlabeled) indices of the train split; the labeled part must fill a batch."""
    labeled, unlabeled = data.split_labeled(
        train_split.labels, info.num_classes, labels_per_class, seed)
    if len(labeled) < batch_size:
        raise data.DataError(f"Only {len(labeled)} labeled examples for batch size "
                             f"{batch_size}; lower --batch_size.")
    return labeled, unlabeled


def finish_run(out_dir, network, model_config, info, test_split, input_config, start,
               history, epoch_seconds, images_per_step, steps, metrics):
    """Scores `network` on the test split, then exports it with metrics.json last."""
    test_ds = data.eval_dataset(test_split.dataset(), info.num_classes, input_config)
    if not getattr(network, "compiled", False):  # a student's network, trained wrapped
        network.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                        metrics=classification_metrics())
    scores = network.evaluate(test_ds, verbose=0, return_dict=True)
    steady = float(np.median(epoch_seconds[1:] or epoch_seconds))  # without tracing
    metrics = dict(
        metrics, test_top1=float(scores["top1"]), test_top5=float(scores["top5"]),
        test_examples=len(test_split), epochs=len(epoch_seconds), steps_per_epoch=steps,
        seconds_per_epoch=steady, seconds_first_epoch=epoch_seconds[0],
        train_images_per_second=steps * images_per_step / steady,
        last_epoch={k: float(v[-1]) for k, v in history.items()},
        parameters=int(network.count_params()), dataset=info.name,
        model=model_config.to_dict(), input=dataclasses.asdict(input_config),
        versions=versions())
    metrics["seconds_total"] = time.time() - start
    export.write_run(out_dir, network, model_config, info, metrics)
    logging.info("Test top-1 %.4f, top-5 %.4f; wrote %s", metrics["test_top1"],
                 metrics["test_top5"], out_dir)
    return metrics
