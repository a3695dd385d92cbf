"""What every training stage shares, as one object: where it runs, its backup,
validation during training, and the end (batch-norm statistics, test scores,
metrics, export by the chief only, backup removed)."""

import dataclasses
import os
import platform
import time
import warnings

import keras
import numpy as np
from absl import logging

from nstudent import data, export
from nstudent.training import distribute
from nstudent.training.backup import StageBackup, backup_dir
from nstudent.training.batchnorm import recalibrate_batch_norm
from nstudent.training.supervised import (Validation, compile_for_evaluation, fit,
                                          steady_seconds)


def versions():
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__,
            "backend": keras.backend.backend(), "python": platform.python_version(),
            "numpy": np.__version__}


def images_only(image, label):
    """(image, label) -> image: what batch-norm statistics are recomputed on."""
    del label
    return image


@dataclasses.dataclass
class StageRun:
    """One training stage's settings and place; `fit` then `finish`."""
    stage: str  # teacher | student | finetune
    out_dir: str
    stage_data: object  # data.StageData
    model_config: object
    input_config: object
    train_config: object
    placement: distribute.Placement = dataclasses.field(default_factory=distribute.current)
    start: float = dataclasses.field(default_factory=time.time)
    backup: StageBackup = None
    optimizer_iterations: int = None

    def scope(self):
        return self.placement.scope()

    @property
    def log_dir(self):
        """TensorBoard logs: the chief's only (other workers write nothing a reader
        could take for a result)."""
        return os.path.join(self.out_dir, "logs") if self.placement.is_chief else None

    def validation_data(self):
        """(dataset, name) to validate on: the held-out labeled images, else the test
        split."""
        sd, config = self.stage_data, self.input_config
        if len(sd.validation_indices):
            return (data.eval_dataset(sd.train.dataset(sd.validation_indices),
                                      sd.info.num_classes, config),
                    f"{len(sd.validation_indices)} held-out labeled images")
        return (data.eval_dataset(sd.test.dataset(), sd.info.num_classes, config),
                f"test split, {len(sd.test)} images")

    def fit(self, model, network, train_ds, steps, settings=None):
        """Trains `model` (network or its training wrapper) for the configured epochs,
        backed up and resumable; validation every --eval_every_epochs."""
        config = self.train_config
        self.backup = StageBackup(
            backup_dir(self.out_dir, self.placement),
            {"stage": self.stage, "model": self.model_config.to_dict(),
             "input": dataclasses.asdict(self.input_config),
             "train": config.backup_settings(), "data": self.stage_data.identity(),
             **(settings or {})},
            config.backup_every_steps, steps)
        validation = None
        if config.eval_every_epochs:
            dataset, source = self.validation_data()
            self._ready_to_evaluate(network, dataset)
            validation = Validation(network, dataset, config.eval_every_epochs, source)
        distribute.prebuild(model, train_ds, self.placement)
        with distribute.synchronised_batch_norm(network, self.placement):
            result = fit(model, distribute.shard_for_workers(train_ds, self.placement),
                         steps, config.epochs, self.log_dir, self.backup, validation)
        self.optimizer_iterations = int(keras.ops.convert_to_numpy(
            model.optimizer.iterations))
        return result

    def _ready_to_evaluate(self, network, dataset):
        """A loss and metrics for `network` (built in the strategy's scope)."""
        with self.scope():
            compile_for_evaluation(network)
        distribute.prebuild(network, dataset, self.placement)

    def finish(self, network, clean_images, history, epoch_seconds, images_per_step,
               steps, metrics):
        """Recomputes batch-norm statistics on `clean_images` (uint8 images of the
        training data), scores `network` on the test split, then (the chief) exports
        it with metrics.json last; the backup goes once the exports are complete."""
        stage_data, input_config = self.stage_data, self.input_config
        bn_batches = recalibrate_batch_norm(
            network, data.clean_batches(clean_images, input_config, stage_data.seed),
            self.train_config.bn_recalibration_batches)
        info = stage_data.info
        test_ds = distribute.shard_for_workers(data.eval_dataset(
            stage_data.test.dataset(), info.num_classes, input_config), self.placement)
        self._ready_to_evaluate(network, test_ds)
        with warnings.catch_warnings():
            # evaluate reads the test stream to its end on purpose; with skipped files
            # its length is unknown and Keras would warn that the input "ran out of data"
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            scores = network.evaluate(test_ds, verbose=0, return_dict=True)
        steady = steady_seconds(epoch_seconds)
        resumed = self.backup.resumed_from if self.backup else None
        metrics = dict(
            metrics, stage=self.stage, test_top1=float(scores["top1"]),
            test_top5=float(scores["top5"]), test_examples=len(stage_data.test),
            epochs=self.train_config.epochs, epochs_trained_here=len(epoch_seconds),
            steps_per_epoch=steps, seconds_per_epoch=steady,
            seconds_first_epoch=epoch_seconds[0] if epoch_seconds else None,
            train_images_per_second=steps * images_per_step / steady,
            last_epoch={k: float(v[-1]) for k, v in history.items()},
            validation={k: [float(x) for x in v] for k, v in history.items()
                        if k.startswith("val_")} or None,
            resumed_from_epoch=resumed["epoch"] if resumed else None,
            resumed_from_step=resumed["step"] if resumed else None,
            optimizer_iterations=self.optimizer_iterations,
            parameters=int(network.count_params()), model=self.model_config.to_dict(),
            input=dataclasses.asdict(input_config), train=self.train_config.report(),
            bn_recalibration_batches=bn_batches, data=stage_data.report(),
            versions=versions(), **self.placement.report())
        if not np.isfinite(steady):
            metrics["train_images_per_second"] = None
        metrics["dataset"] = info.name
        metrics["seconds_total"] = time.time() - self.start
        skipped = metrics["data"]["skipped_unreadable_images"]
        if skipped:
            logging.warning("Skipped %d unreadable images (first: %s).", skipped,
                            ", ".join(metrics["data"]["skipped_unreadable_first"][:3]))
        if self.placement.is_chief:
            export.write_run(self.out_dir, network, self.model_config, info, metrics,
                             input_config.eval_crop_fraction)
            logging.info("Test top-1 %.4f, top-5 %.4f; wrote %s", metrics["test_top1"],
                         metrics["test_top5"], self.out_dir)
        else:
            logging.info("Test top-1 %.4f; worker %d writes nothing (the chief exports).",
                         metrics["test_top1"], self.placement.worker_index)
        if self.backup is not None:
            self.backup.remove()
        return metrics
