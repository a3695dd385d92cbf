"""Starting from an EfficientNet weights file in Keras applications' layout.

nstudent's EfficientNet has the layer names and weight shapes of
`keras.applications.EfficientNetB0..B7`, so a file of theirs (ImageNet weights
the user has on disk, `.h5`, `.weights.h5` or `.keras`, with or without the
top) loads by layer name. Keras reads the file into its own application model
(every format it supports, nothing downloaded); the weights then move layer by
layer. The classifier is skipped when the class count differs, the stem is
summed over its colour channels for grey images (as timm does), and the input
normalisation becomes the one the weights were trained with.
"""

import dataclasses
import os
import warnings

import numpy as np
from absl import logging

from nstudent.errors import InputError

APPLICATIONS = {f"b{i}": f"EfficientNetB{i}" for i in range(8)}
HEAD = {"logits": "predictions"}  # nstudent's classifier -> Keras'
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STDDEV = (0.229, 0.224, 0.225)


class WeightsError(InputError):
    """A weights file that is missing or does not fit the model; the message says why."""


@dataclasses.dataclass
class PretrainedWeights:
    path: str
    variant: str  # the application the file loaded into
    weights: dict  # layer name -> list of arrays
    input_mean: tuple  # pixel units, per RGB channel
    input_std: tuple

    def normalization(self, channels):
        """ModelConfig fields for the input normalisation these weights expect."""
        if channels == 3:
            return {"input_mean": self.input_mean, "input_std": self.input_std}
        return {"input_mean": (float(np.mean(self.input_mean)),),
                "input_std": (float(np.mean(self.input_std)),)}

    def mismatch(self, network):
        """The first weighted layer the file cannot fill or the model lacks, or None."""
        names = {HEAD.get(layer.name, layer.name) for layer in network.layers}
        extra = [n for n in self.weights if n not in names]
        if extra:
            return f"{extra[0]} (in the file, not in the model)"
        for layer in network.layers:
            if not layer.weights:
                continue
            name = HEAD.get(layer.name, layer.name)
            stored = self.weights.get(name)
            if name in HEAD.values():
                continue  # a classifier of another class count is skipped, not an error
            if stored is None:
                return f"{layer.name} (not in the file)"
            shapes = [tuple(w.shape) for w in layer.weights]
            have = [_adapted(a, tuple(s)).shape for a, s in zip(stored, shapes)]
            if len(stored) != len(shapes) or have != shapes:
                return (f"{layer.name} (file {[tuple(a.shape) for a in stored]}, model "
                        f"{shapes})")
        return None

    def apply(self, network):
        """Copies the weights into `network` by layer name; returns the layers skipped."""
        problem = self.mismatch(network)
        if problem:
            raise WeightsError(f"--init_weights={self.path} holds EfficientNet-"
                            f"{self.variant.upper()} weights that do not fit this model: "
                            f"first layer that does not fit: {problem}.")
        skipped = []
        for layer in network.layers:
            if not layer.weights:
                continue
            stored = self.weights.get(HEAD.get(layer.name, layer.name))
            shapes = [tuple(w.shape) for w in layer.weights]
            arrays = None if stored is None else [_adapted(a, s) for a, s in zip(stored, shapes)]
            if arrays is None or [a.shape for a in arrays] != shapes:
                skipped.append(layer.name)
                continue
            layer.set_weights(arrays)
        logging.info("Loaded %s (EfficientNet-%s) by layer name%s.", self.path,
                     self.variant.upper(),
                     f"; not loaded: {', '.join(skipped)}" if skipped else "")
        return skipped


def _adapted(array, shape):
    """A stem kernel [k, k, 3, f] summed over colours for a one-channel model."""
    if array.ndim == 4 and array.shape[2] == 3 and len(shape) == 4 and shape[2] == 1:
        return array.sum(axis=2, keepdims=True)
    return array


def _array_shapes(path):
    """Shapes of every array in an .h5 weights file (legacy or Keras 3 layout)."""
    import h5py

    shapes = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            shapes.append(tuple(obj.shape))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return shapes


def _head(shapes):
    """(include_top, classes): the one 2-D array of an EfficientNet is its classifier."""
    found = [s[1] for s in shapes if len(s) == 2]
    return (True, found[0]) if found else (False, None)


def _application(variant, path):
    """Keras' application model for `variant` with the file loaded, or the error."""
    import keras

    if path.endswith(".keras"):
        return keras.saving.load_model(path, compile=False)
    shapes = _array_shapes(path)
    include_top, classes = _head(shapes)
    model = getattr(keras.applications, APPLICATIONS[variant])(
        weights=None, include_top=include_top, classes=classes or 1000,
        input_shape=None if include_top else (None, None, 3))
    # Keras skips what does not match in a .weights.h5 with a warning only: the
    # file must hold exactly the model's arrays.
    expected = sorted(tuple(v.shape) for v in model.weights)
    if sorted(shapes) != expected:
        raise InputError(f"the file holds {len(shapes)} arrays, EfficientNet-"
                         f"{variant.upper()} has {len(expected)} of other shapes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(path)
    return model


def _input_normalisation(model):
    """Pixel-unit (mean, std) that Keras' EfficientNet computes with these weights."""
    import keras

    norms = [l for l in model.layers if isinstance(l, keras.layers.Normalization)]
    if not norms:
        return (127.5,) * 3, (127.5,) * 3  # no normalisation layer: nstudent's default
    mean, variance = (np.asarray(w, np.float64).reshape(-1) for w in
                      norms[0].get_weights()[:2])
    if np.allclose(mean, IMAGENET_MEAN, atol=1e-3) and np.allclose(
            variance, IMAGENET_STDDEV, atol=1e-3):
        # Keras' ImageNet files store the standard deviation as the variance and
        # divide once more by its root (weights="imagenet"): x/255 - mean, / stddev.
        std = variance
    else:
        std = np.sqrt(variance)
    return tuple(float(255 * m) for m in mean), tuple(float(255 * s) for s in std)


def load_pretrained(path, variant):
    """Reads an EfficientNet weights file for `variant` (b0-b7)."""
    if not os.path.exists(path):
        raise WeightsError(f"--init_weights: no file at {path!r}.")
    if variant not in APPLICATIONS:
        raise WeightsError(f"--init_weights: Keras has no application weights layout for "
                        f"EfficientNet-{variant.upper()}; use b0-b7.")
    try:
        model = _application(variant, path)
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds on a wrong file
        found = _which_variant(path, variant)
        if found is None:
            raise WeightsError(f"--init_weights={path} is not an EfficientNet-"
                            f"{variant.upper()} weights file Keras can read: "
                            f"{str(error).splitlines()[0][:300]}") from None
        variant, model = found
    mean, std = _input_normalisation(model)
    import keras

    weights = {layer.name: [np.asarray(w) for w in layer.get_weights()]
               for layer in model.layers
               if layer.weights and not isinstance(layer, keras.layers.Normalization)}
    return PretrainedWeights(path, variant, weights, mean, std)


def _which_variant(path, tried):
    """On the error path only: the variant whose application does load the file."""
    for variant in APPLICATIONS:
        if variant == tried:
            continue
        try:
            return variant, _application(variant, path)
        except Exception:  # noqa: BLE001
            continue
    return None


def build_with_weights(config, init_weights=None):
    """(config, network): the network of `config`, started from `init_weights` when given
    (the config then carries the input normalisation those weights expect)."""
    from nstudent.models.efficientnet import build_efficientnet

    if not init_weights:
        return config, build_efficientnet(config)
    pretrained = load_pretrained(init_weights, config.variant)
    config = config.replace(**pretrained.normalization(config.channels))
    network = build_efficientnet(config)
    pretrained.apply(network)
    return config, network
