"""Loading any exported model for inference, and top-1/top-5 accuracy."""

import dataclasses
import functools
import hashlib
import os
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from nstudent.errors import InputError, MissingInput
from nstudent.evaluation import multilabel
from nstudent.export.atomic import read_json
from nstudent.export.run import MODEL_INFO, PRETRAIN

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"


@dataclasses.dataclass
class Classifier:
    """Inference on float32 images in [0, 255], [B, H, W, C], in inference mode.

    probabilities(images) -> numpy [B, classes] (through serving_default for a
    SavedModel); logits(images) -> numpy [B, classes], images at `image_size`.
    """

    probabilities: Callable
    path: str
    kind: str  # "keras" or "saved_model"
    info: Optional[dict]  # model_info.json of the run, when there is one
    channels: int
    keras_model: Optional[keras.Model] = None
    logits: Optional[Callable] = None
    input_size: Optional[int] = None  # the SavedModel's logits input side
    num_classes: Optional[int] = None

    @property
    def image_size(self):
        return self.info["image_size"] if self.info else self.input_size

    @property
    def temperature(self):
        """A calibrated model's T (its probabilities are softmax(logits / T)); 1.0 else."""
        return (self.info or {}).get("calibration_temperature") or 1.0

    @property
    def multilabel(self):
        """A sigmoid per class (model_info.json's task), not a softmax."""
        return (self.info or {}).get("task") == "multilabel"

    @property
    def thresholds(self):
        """A multi-label model's per-class thresholds (chosen on validation images and
        recorded by its run); 0.5 each when the run recorded none."""
        recorded = (self.info or {}).get("thresholds")
        return np.asarray(recorded if recorded else [0.5] * self.num_classes, np.float64)

    @property
    def crop_fraction(self):
        """0: images are resized to a square; else the central fraction kept."""
        return (self.info or {}).get("eval_crop_fraction", 0.0)

    @functools.cached_property
    def digest(self):
        """What identifies the model: `weights_digest` of its weights (a retrained
        teacher gets another even at the same path; the run folder, its .keras file and
        its SavedModel give the same one)."""
        if self.keras_model is not None:
            variables = self.keras_model.weights
        else:
            variables = self._loaded.variables
        return weights_digest([keras.ops.convert_to_numpy(v) for v in variables
                               if np.issubdtype(np.dtype(_dtype_name(v)), np.floating)])

    def check_dataset(self, dataset_info):
        """Stops before inference when the data cannot be what the model was trained on."""
        if dataset_info.channels != self.channels:
            raise InputError(f"The model takes {self.channels}-channel images but "
                             f"{dataset_info.name} has {dataset_info.channels} channels.")
        trained = (self.info or {}).get("dataset", {}).get("class_names")
        names = list(dataset_info.class_names)
        if trained and names != list(trained):
            unknown = sorted(set(names) - set(trained))
            raise InputError(
                f"{dataset_info.name} has classes the model was not trained on: "
                f"{', '.join(unknown)}." if unknown else
                f"{dataset_info.name} has classes {names}, the model {list(trained)}.")


def weights_digest(arrays):
    """SHA-256 (hex) of weight arrays in their order: each one's dtype, shape and bytes.
    Of the arrays, not of a .keras file (a zip holding timestamps), so saving the same
    weights twice gives the same digest."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _dtype_name(variable):
    dtype = variable.dtype
    return getattr(dtype, "name", dtype)


def _run_info(run_dir):
    path = os.path.join(run_dir, MODEL_INFO)
    return read_json(path) if os.path.exists(path) else None


def load_classifier(path, prefer="saved_model", multilabel=False):
    """Opens a run folder, a `.keras` file or a SavedModel folder; a multi-label one
    only where the caller reads its logits as sigmoids (`multilabel`)."""
    if not os.path.exists(path):
        raise MissingInput(f"No model at {path!r}.")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        order = [SAVED_MODEL_DIR, KERAS_FILE]
        if prefer == "keras":
            order.reverse()
        for name in order:
            if os.path.exists(os.path.join(path, name)):
                return load_classifier(os.path.join(path, name), multilabel=multilabel)
        raise MissingInput(f"{path!r} holds neither {KERAS_FILE} nor {SAVED_MODEL_DIR}/.")
    info = _run_info(os.path.dirname(os.path.abspath(path)))
    temperature = (info or {}).get("calibration_temperature") or 1.0
    # a multi-label model's probabilities are a sigmoid per class, as it serves them
    activate = (_sigmoid32 if (info or {}).get("task") == "multilabel"
                else lambda z: _softmax(z / temperature))
    if info and info.get("task") == "multilabel" and not multilabel:
        raise InputError(f"{path!r} is a multi-label classifier: its metrics.json holds "
                         "its test mAP, and its SavedModel serves sigmoid probabilities "
                         "and labels; this tool reads single-label classifiers only in "
                         "this version.")
    if info and info.get("kind") == PRETRAIN:
        raise InputError(f"{path!r} is a contrastive pretraining run (embeddings, no "
                         "classifier); fine-tune it first: tools/train.py "
                         "--init_from_pretrained=<that run>.")
    if path.endswith(".keras"):
        model = keras.saving.load_model(path, compile=False)

        def logits(images):
            return np.asarray(model.predict_on_batch(images), np.float32)

        def probabilities(images):
            return activate(logits(images))

        return Classifier(probabilities, path, "keras", info, model.input_shape[-1], model,
                          logits, num_classes=int(model.output_shape[-1]))
    loaded = tf.saved_model.load(path)
    if "serving_default" not in loaded.signatures:
        raise InputError(f"SavedModel {path!r} has no serving_default signature.")
    serve = loaded.signatures["serving_default"]

    def probabilities(images):
        if hasattr(loaded, "logits"):
            # the images come prepared at the model's size, as evaluation makes them;
            # serving_default would prepare them again (a second centre crop for
            # random_resized models), so the SavedModels written here are read as
            # the .keras file is (serving divides by the same T)
            return activate(logits(images))
        images = tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)
        return serve(images=images)["probabilities"].numpy()

    def logits(images):
        return loaded.logits(tf.constant(images, tf.float32)).numpy()

    channels = serve.structured_input_signature[1]["images"].shape[-1]
    size = num_classes = None
    if hasattr(loaded, "logits"):  # the SavedModels written here have it
        fn = loaded.logits.concrete_functions[0]
        size = fn.structured_input_signature[0][0].shape[1]
        num_classes = fn.structured_outputs.shape[-1]
    classifier = Classifier(probabilities, path, "saved_model", info, channels,
                            logits=logits if hasattr(loaded, "logits") else None,
                            input_size=size, num_classes=num_classes)
    classifier._loaded = loaded  # keeps the variables alive
    return classifier


def _sigmoid32(logits):
    return multilabel.sigmoid(logits).astype(np.float32)


def _softmax(logits):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def top_k_accuracy(classifier, batches, num_classes):
    """Top-1 and top-5 over (float images, one-hot labels) batches, the count, and the
    expected calibration error of the probabilities as the model gives them."""
    from nstudent.evaluation.calibration import expected_calibration_error

    correct1 = correct5 = total = 0
    k = min(5, num_classes)
    seen, truths = [], []
    for images, labels in batches.as_numpy_iterator():
        probs = classifier.probabilities(images)
        if probs.shape[-1] != num_classes:
            raise InputError(f"The model predicts {probs.shape[-1]} classes but the "
                             f"dataset has {num_classes}.")
        truth = np.argmax(np.asarray(labels), axis=-1)
        top = np.argsort(-probs, axis=-1)[:, :k]
        correct1 += int(np.sum(top[:, 0] == truth))
        correct5 += int(np.sum(np.any(top == truth[:, None], axis=-1)))
        total += len(truth)
        seen.append(probs)
        truths.append(truth)
    if not total:
        raise InputError("The evaluation split is empty.")
    return {"top1": correct1 / total, "top5": correct5 / total, "examples": total,
            "ece": expected_calibration_error(np.concatenate(seen), np.concatenate(truths)),
            "calibration_temperature": classifier.temperature}


def multilabel_scores(classifier, batches, class_names):
    """A multi-label classifier's mAP, per-class AP and F1 at its recorded thresholds
    over (float images, multi-hot targets) batches (evaluation/multilabel.py)."""
    from nstudent.evaluation.calibration import predicted_logits

    if classifier.logits is None:
        raise InputError(f"{classifier.path!r} has no logits endpoint to rank images by.")
    logits, targets = predicted_logits(classifier.logits, batches)
    if logits.shape[-1] != len(class_names):
        raise InputError(f"The model predicts {logits.shape[-1]} classes but the dataset "
                         f"has {len(class_names)}.")
    return multilabel.scores(logits, targets, classifier.thresholds, class_names)
