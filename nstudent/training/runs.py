"""What every training run shares: test scores, batch-norm statistics, metrics, export."""

import dataclasses
import platform
import time
import warnings

import keras
import numpy as np
from absl import logging

from nstudent import data, export
from nstudent.training.batchnorm import recalibrate_batch_norm
from nstudent.training.supervised import classification_metrics


def versions():
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version(),
            "numpy": np.__version__}


def images_only(image, label):
    """(image, label) -> image: what batch-norm statistics are recomputed on."""
    del label
    return image


def finish_run(out_dir, network, model_config, stage_data, input_config, train_config,
               clean_images, start, history, epoch_seconds, images_per_step, steps,
               metrics):
    """Recomputes batch-norm statistics on `clean_images` (uint8 images of the training
    data), scores `network` on the test split, then exports it with metrics.json last."""
    bn_batches = recalibrate_batch_norm(
        network, data.clean_batches(clean_images, input_config, stage_data.seed),
        train_config.bn_recalibration_batches)
    info = stage_data.info
    test_ds = data.eval_dataset(stage_data.test.dataset(), info.num_classes, input_config)
    if not getattr(network, "compiled", False):  # a student's network, trained wrapped
        network.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                        metrics=classification_metrics())
    with warnings.catch_warnings():
        # evaluate reads the test stream to its end on purpose; with skipped files its
        # length is unknown and Keras would warn that the input "ran out of data"
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        scores = network.evaluate(test_ds, verbose=0, return_dict=True)
    steady = float(np.median(epoch_seconds[1:] or epoch_seconds))  # without tracing
    metrics = dict(
        metrics, test_top1=float(scores["top1"]), test_top5=float(scores["top5"]),
        test_examples=len(stage_data.test), epochs=len(epoch_seconds),
        steps_per_epoch=steps, seconds_per_epoch=steady,
        seconds_first_epoch=epoch_seconds[0],
        train_images_per_second=steps * images_per_step / steady,
        last_epoch={k: float(v[-1]) for k, v in history.items()},
        parameters=int(network.count_params()), model=model_config.to_dict(),
        input=dataclasses.asdict(input_config), bn_recalibration_batches=bn_batches,
        data=stage_data.report(), versions=versions())
    metrics["dataset"] = info.name
    metrics["seconds_total"] = time.time() - start
    skipped = metrics["data"]["skipped_unreadable_images"]
    if skipped:
        logging.warning("Skipped %d unreadable images (first: %s).", skipped,
                        ", ".join(metrics["data"]["skipped_unreadable_first"][:3]))
    export.write_run(out_dir, network, model_config, info, metrics,
                     input_config.eval_crop_fraction)
    logging.info("Test top-1 %.4f, top-5 %.4f; wrote %s", metrics["test_top1"],
                 metrics["test_top5"], out_dir)
    return metrics
