"""Fine-tuning from a pretraining run (SimCLRv2): the classifier keeps the encoder
and the first K layers of the projection head (`--ft_proj_selector`), takes
their weights by name, and gets a new classifier on top; then the whole network
trains on the labeled images like any teacher."""

import os

import keras
from absl import logging

from nstudent import models
from nstudent.data import DataError
from nstudent.errors import InputError
from nstudent.export import MODEL_INFO, PRETRAIN, is_finished, read_json
from nstudent.models.projection_head import HeadConfig

ARCHITECTURE = ("variant", "width_scale", "depth_scale", "stem_stride", "stage_strides",
                "channels")


def read_pretrain_run(path):
    """model_info.json of a finished pretraining run, or a DataError saying why not."""
    info_path = os.path.join(path, MODEL_INFO)
    info = read_json(info_path) if os.path.exists(info_path) else {}
    if info.get("kind") != PRETRAIN or not is_finished(path):
        if info.get("kind") == PRETRAIN:
            found = "it has no metrics.json yet (unfinished: re-run its command to resume)."
        elif info:  # a run of nstudent's, but a classifier (older runs have no kind)
            found = f"it holds a {info.get('kind', 'classifier')}."
        elif os.path.isdir(path):
            found = f"found {', '.join(sorted(os.listdir(path))) or 'nothing'}."
        else:
            found = "that folder does not exist."
        raise DataError(
            f"--init_from_pretrained={path!r} is not a finished pretraining run "
            f"(tools/pretrain.py writes model.keras, model_info.json of kind "
            f"'{PRETRAIN}', then metrics.json): {found}")
    return info


def check_pretrained(path, selector):
    """(the run's ModelConfig, HeadConfig) once `path` is a pretraining run whose head
    has `selector` layers to keep."""
    info = read_pretrain_run(path)
    head = HeadConfig(**info["head"])
    if not 0 <= selector <= head.layers:
        raise InputError(f"--ft_proj_selector={selector}, but the projection head of "
                         f"{path} has {head.layers} layers: choose 0 (the encoder alone) "
                         f"to {head.layers}.")
    return models.ModelConfig.from_dict(info["model"]), head


def finetune_config(path, model_config, selector):
    """`model_config` with the pretrained run's architecture checked, its input
    normalisation and the first `selector` head layers."""
    pretrained, head = check_pretrained(path, selector)
    differ = [f"{k} {getattr(pretrained, k)} (pretrained) vs {getattr(model_config, k)}"
              for k in ARCHITECTURE if getattr(pretrained, k) != getattr(model_config, k)]
    if differ:
        raise InputError(f"--init_from_pretrained={path} has another architecture: "
                         f"{'; '.join(differ)}. Use the pretraining run's model flags.")
    return model_config.replace(
        input_mean=pretrained.input_mean, input_std=pretrained.input_std,
        head_units=head.units(pretrained)[:selector],
        head_linear_last=selector == head.layers)


def pretrained_weights(path):
    """{layer name: weight arrays} of the pretraining run at `path` (read once, outside
    any strategy scope: only the values are copied)."""
    pretrained = keras.saving.load_model(os.path.join(path, "model.keras"), compile=False)
    return {layer.name: layer.get_weights() for layer in pretrained.layers if layer.weights}


def apply_pretrained(network, weights, path):
    """Copies every layer of `network` but its classifier from `weights`
    (`pretrained_weights(path)`), by name; returns the names copied."""
    copied = []
    for layer in network.layers:
        if not layer.weights or layer.name == "logits":
            continue
        if layer.name not in weights:
            raise DataError(f"{path}: the pretrained network has no layer {layer.name}.")
        layer.set_weights(weights[layer.name])
        copied.append(layer.name)
    logging.info("Started from %s: %d layers (encoder and %d head layers); a new "
                 "classifier.", path, len(copied),
                 sum(name.startswith("head_dense_") for name in copied))
    return copied
