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

from nstudent import data, export, models
from nstudent.errors import InputError
from nstudent.training import distribute
from nstudent.training.backup import StageBackup, backup_dir
from nstudent.training.batchnorm import recalibrate_batch_norm
from nstudent.training.supervised import (MULTICLASS, MULTILABEL, Validation,
                                          compile_for_evaluation, fit, steady_seconds)


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
    stage: str  # teacher | student | finetune | pretrain
    out_dir: str
    stage_data: object  # data.StageData
    model_config: object
    input_config: object
    train_config: object
    placement: distribute.Placement = dataclasses.field(default_factory=distribute.current)
    start: float = dataclasses.field(default_factory=time.time)
    backup: StageBackup = None
    optimizer_iterations: int = None
    validation: Validation = None  # its curve goes to metrics.json and curves.png

    def scope(self):
        return self.placement.scope()

    @property
    def task(self):
        return getattr(self.stage_data.info, "task", MULTICLASS)

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

    def fit(self, model, network, train_ds, steps, settings=None, validate=True):
        """Trains `model` (network or its training wrapper) for the configured epochs,
        backed up and resumable; validation (a classifier's, `validate`) every
        --eval_every_epochs. `train_ds(start)`: the training stream after `start`
        batches (supervised.fit)."""
        config = self.train_config
        logging.info("%s network: %d parameters; feature maps at %d px: %s; stochastic "
                     "depth reaches %s.", self.stage, network.count_params(),
                     self.model_config.resolved_image_size,
                     models.describe_feature_maps(self.model_config),
                     ", ".join(models.residual_blocks(self.model_config)) or "no block")
        self.backup = StageBackup(
            backup_dir(self.out_dir, self.placement),
            {"stage": self.stage, "model": self.model_config.to_dict(),
             "input": dataclasses.asdict(self.input_config),
             "train": config.backup_settings(), "data": self.stage_data.identity(),
             **(settings or {})},
            config.backup_every_steps, steps)
        validation = None
        if config.eval_every_epochs and validate:
            dataset, source = self.validation_data()
            self._ready_to_evaluate(network, dataset)
            validation = Validation(network, dataset, config.eval_every_epochs, source,
                                    self.task)
        self.validation = validation
        distribute.prebuild(model, train_ds(0), self.placement)

        def stream(start):
            return distribute.shard_for_workers(train_ds(start), self.placement)

        with distribute.synchronised_batch_norm(network, self.placement):
            result = fit(model, stream, steps, config.epochs, self.log_dir, self.backup,
                         validation)
        self.optimizer_iterations = int(keras.ops.convert_to_numpy(
            model.optimizer.iterations))
        return result

    def _ready_to_evaluate(self, network, dataset):
        """A loss and metrics for `network` (built in the strategy's scope)."""
        with self.scope():
            compile_for_evaluation(network, self.task)
        distribute.prebuild(network, dataset, self.placement)

    def _evaluate(self, network, split, indices=None):
        """{"top1", "top5"} of `network` on `split` (the images at `indices`)."""
        dataset = distribute.shard_for_workers(data.eval_dataset(
            split.dataset(indices), self.stage_data.info.num_classes, self.input_config),
            self.placement)
        self._ready_to_evaluate(network, dataset)
        with warnings.catch_warnings():
            # evaluate reads the stream to its end on purpose; with skipped files its
            # length is unknown and Keras would warn that the input "ran out of data"
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            scores = network.evaluate(dataset, verbose=0, return_dict=True)
        return {"top1": float(scores["top1"]), "top5": float(scores["top5"])}

    def recalibrate(self, network, clean_images):
        """Batch-norm statistics recomputed on `clean_images` (uint8 images of the
        training data); returns the batches used."""
        return recalibrate_batch_norm(
            network, data.clean_batches(clean_images, self.input_config, self.stage_data.seed),
            self.train_config.bn_recalibration_batches)

    def finish(self, network, clean_images, history, epoch_seconds, images_per_step,
               steps, metrics):
        """Recomputes batch-norm statistics on `clean_images`, scores `network` on the
        test split, then (the chief) exports it with metrics.json last; the backup
        goes once the exports are complete."""
        bn_batches = self.recalibrate(network, clean_images)
        stage_data, input_config = self.stage_data, self.input_config
        if self.task == MULTILABEL:
            return self._finish_multilabel(network, history, epoch_seconds,
                                           images_per_step, steps, dict(
                                               metrics, bn_recalibration_batches=bn_batches))
        scores = self._evaluate(network, stage_data.test)
        metrics = dict(metrics, test_top1=scores["top1"], test_top5=scores["top5"],
                       test_examples=len(stage_data.test), bn_recalibration_batches=bn_batches)
        held = stage_data.validation_indices
        if len(held):
            # the model as exported (batch norm recomputed), which the in-training
            # validation history (`validation`) is not: what recipes are compared by
            scores = self._evaluate(network, stage_data.train, held)
            metrics.update(validation_top1=scores["top1"], validation_top5=scores["top5"],
                           validation_examples=len(held))
        metrics = self.report(network, history, epoch_seconds, images_per_step, steps,
                              metrics)

        def write():
            self.draw_curves(metrics)
            temperature = self.assess(network, metrics)
            export.write_run(self.out_dir, network, self.model_config, stage_data.info,
                             metrics, input_config.eval_crop_fraction,
                             temperature=temperature, held_out=stage_data.held_out())

        summary = "Test top-1 %.4f, top-5 %.4f" % (metrics["test_top1"], metrics["test_top5"])
        if len(held):
            summary += "; held-out validation top-1 %.4f (%d images)" % (
                metrics["validation_top1"], len(held))
        return self.publish(metrics, write, summary)

    def _finish_multilabel(self, network, history, epoch_seconds, images_per_step, steps,
                           metrics):
        """A multi-label classifier's end: per-class thresholds chosen on the held-out
        labeled images (never the test split; 0.5 without them), then the test split's
        mAP, per-class AP and F1 at those thresholds; the export serves them."""
        from nstudent.evaluation import calibration, multilabel, pictures

        sd, config = self.stage_data, self.input_config
        names = list(sd.info.class_names)

        def outputs(split, indices=None):
            return calibration.network_outputs(network, data.eval_dataset(
                split.dataset(indices), sd.info.num_classes, config))

        held = sd.validation_indices
        shift = np.zeros(len(names))
        if len(held):
            logits, targets = outputs(sd.train, held)
            # the balanced loss leaves each class's sigmoid off by its prior's log-odds:
            # calibrated on held-out images and folded into the head's bias, so that
            # pseudo-label thresholds and served probabilities mean what they say
            shift = multilabel.fit_bias(logits, targets)
            _shift_bias(network, shift)
            thresholds = multilabel.choose_thresholds(
                multilabel.sigmoid(logits + shift), targets)
            # the exported model's (the per-class shift leaves each class's ranking)
            metrics = dict(metrics, validation_map=float(
                multilabel.mean_average_precision(logits, targets)["map"]),
                validation_examples=len(held))
            source = f"best F1 on {len(held)} held-out labeled images"
            logging.info("Per-class logit shift calibrating the sigmoids on the held-out "
                         "images: %s.", ", ".join(f"{n} {b:+.2f}" for n, b in
                                                  zip(names, shift)))
        else:
            thresholds = np.full(len(names), multilabel.DEFAULT_THRESHOLD)
            source = "0.5 (no held-out labeled images: set --validation_fraction)"
            logging.warning("Multi-label thresholds: %s.", source)
        scores = multilabel.scores(*outputs(sd.test), thresholds, names)
        if scores["skipped"]:
            logging.warning("No test positives for %s: left out of the mAP.",
                            ", ".join(map(str, scores["skipped"])))
        metrics = self.report(network, history, epoch_seconds, images_per_step, steps, dict(
            metrics, task=MULTILABEL, test_map=scores["map"],
            test_average_precision=dict(zip(names, scores["per_class"])),
            test_skipped_classes=scores["skipped"],
            test_micro_f1=scores["micro_f1"], test_macro_f1=scores["macro_f1"],
            thresholds=dict(zip(names, thresholds.tolist())), thresholds_from=source,
            calibration_bias_shift=dict(zip(names, shift.tolist())),
            test_examples=len(sd.test)))

        def write():
            os.makedirs(self.out_dir, exist_ok=True)
            self.draw_curves(metrics)
            png = pictures.average_precision_png(
                scores["per_class"], names, thresholds,
                os.path.join(self.out_dir, "average_precision.png"),
                f"{os.path.basename(os.path.normpath(self.out_dir))} ({self.stage}): "
                f"test mAP {scores['map']:.4f}")
            pictures.to_tensorboard(os.path.join(self.out_dir, "logs"),
                                    {"test/average_precision": png})
            export.write_run(self.out_dir, network, self.model_config, sd.info, metrics,
                             config.eval_crop_fraction, thresholds=thresholds.tolist(),
                             held_out=sd.held_out())

        return self.publish(metrics, write, "Test mAP %.4f, micro F1 %.4f, macro F1 %.4f" % (
            scores["map"], scores["micro_f1"], scores["macro_f1"]))

    def draw_curves(self, metrics):
        """curves.png: the training loss and top-1 by epoch, with the validation
        scores where they were taken (also in TensorBoard)."""
        from nstudent.evaluation import pictures

        os.makedirs(self.out_dir, exist_ok=True)
        name = f"{os.path.basename(os.path.normpath(self.out_dir))} ({self.stage})"
        png = pictures.curves_png(metrics["training_curve"], metrics["validation_curve"],
                                  os.path.join(self.out_dir, "curves.png"), name,
                                  start_epoch=self.train_config.epochs - len(
                                      metrics["training_curve"].get("loss", [])))
        pictures.to_tensorboard(os.path.join(self.out_dir, "logs"), {"train/curves": png})

    def assess(self, network, metrics):
        """Before the exports (the chief): the test split's confusion matrix and
        reliability diagram (PNGs) and its ECE, NLL and Brier in `metrics`; with
        --calibration=temperature, T fitted on the held-out labeled images (never the
        training or test images) and the figures again with it. Returns T (None: not
        calibrated)."""
        from nstudent.evaluation import calibration, pictures

        sd, config, out = self.stage_data, self.input_config, self.out_dir
        os.makedirs(out, exist_ok=True)
        logits, labels = calibration.network_logits(network, data.eval_dataset(
            sd.test.dataset(), sd.info.num_classes, config))
        name = f"{os.path.basename(os.path.normpath(out))} ({self.stage})"
        pictures.confusion_png(
            pictures.confusion_matrix(labels, logits.argmax(1), sd.info.num_classes),
            list(sd.info.class_names), os.path.join(out, "confusion.png"), name)
        before = calibration.calibration_figures(logits, labels)
        metrics["test_calibration"] = before
        calibration.reliability_diagram(calibration.softmax(logits), labels,
                                        os.path.join(out, "reliability.png"),
                                        f"{name}: softmax")
        pngs = {"test/confusion": os.path.join(out, "confusion.png"),
                "test/reliability": os.path.join(out, "reliability.png")}
        if self.train_config.calibration != "temperature":
            pictures.to_tensorboard(os.path.join(out, "logs"), pngs)
            return None
        held = sd.validation_indices
        if not len(held):
            raise InputError("--calibration=temperature needs labeled images held out from "
                             "training: set --validation_fraction.")
        held_logits, held_labels = calibration.network_logits(network, data.eval_dataset(
            sd.train.dataset(held), sd.info.num_classes, config))
        t = calibration.fit_temperature(held_logits, held_labels)
        if not 1.01 * calibration.T_RANGE[0] < t < 0.99 * calibration.T_RANGE[1]:
            logging.warning("Calibration: T=%.3f is at the end of the range searched %s; "
                            "the logits are far off a calibrated scale (%d held-out "
                            "images).", t, calibration.T_RANGE, len(held))
        after = calibration.calibration_figures(logits, labels, t)
        metrics["calibration"] = {
            "method": "temperature", "temperature": t, "fitted_on": sd.held_out(),
            "held_out_before": calibration.calibration_figures(held_logits, held_labels),
            "held_out_after": calibration.calibration_figures(held_logits, held_labels, t),
            "test_before": before, "test_after": after}
        pngs["test/reliability_calibrated"] = calibration.reliability_diagram(
            calibration.softmax(logits, t), labels,
            os.path.join(out, "reliability_calibrated.png"),
            f"{name}: softmax(logits / {t:.3f})")
        pictures.to_tensorboard(os.path.join(out, "logs"), pngs)
        logging.info("Calibration: T=%.4f fitted on %d held-out images; test ECE %.4f -> "
                     "%.4f, NLL %.4f -> %.4f, Brier %.4f -> %.4f (%d images).", t, len(held),
                     before["ece"], after["ece"], before["nll"], after["nll"],
                     before["brier"], after["brier"], after["examples"])
        return t

    def report(self, network, history, epoch_seconds, images_per_step, steps, metrics):
        """metrics.json: the stage's own `metrics` and what every stage records."""
        stage_data = self.stage_data
        steady = steady_seconds(epoch_seconds)
        resumed = self.backup.resumed_from if self.backup else None
        metrics = dict(
            metrics, stage=self.stage,
            epochs=self.train_config.epochs, epochs_trained_here=len(epoch_seconds),
            steps_per_epoch=steps, seconds_per_epoch=steady,
            seconds_first_epoch=epoch_seconds[0] if epoch_seconds else None,
            train_images_per_second=steps * images_per_step / steady,
            last_epoch={k: float(v[-1]) for k, v in history.items()},
            validation={k: [float(x) for x in v] for k, v in history.items()
                        if k.startswith("val_")} or None,
            validation_curve=self.validation.curve if self.validation else None,
            training_curve={k: [float(x) for x in v] for k, v in history.items()
                            if not k.startswith("val_")},
            resumed_from_epoch=resumed["epoch"] if resumed else None,
            resumed_from_step=resumed["step"] if resumed else None,
            optimizer_iterations=self.optimizer_iterations,
            parameters=int(network.count_params()), model=self.model_config.to_dict(),
            input=dataclasses.asdict(self.input_config), train=self.train_config.report(),
            data=stage_data.report(), versions=versions(), **self.placement.report())
        if not np.isfinite(steady):
            metrics["train_images_per_second"] = None
        metrics["dataset"] = stage_data.info.name
        metrics["seconds_total"] = time.time() - self.start
        skipped = metrics["data"]["skipped_unreadable_images"]
        if skipped:
            logging.warning("Skipped %d unreadable images (first: %s).", skipped,
                            ", ".join(metrics["data"]["skipped_unreadable_first"][:3]))
        return metrics

    def publish(self, metrics, write, summary):
        """The chief runs `write` (the exports, metrics.json last); then the backup
        goes. Returns `metrics`."""
        if self.placement.is_chief:
            write()
            logging.info("%s; wrote %s", summary, self.out_dir)
        else:
            logging.info("%s; worker %d writes nothing (the chief exports).", summary,
                         self.placement.worker_index)
        if self.backup is not None:
            self.backup.remove()
        return metrics


def _shift_bias(network, shift):
    """Adds `shift` [classes] to the bias of the network's output layer ("logits")."""
    layer = network.get_layer("logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + np.asarray(shift, bias.dtype)])
