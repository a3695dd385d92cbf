"""A finished run folder: model.keras, saved_model/, model_info.json, metrics.json.
A classifier, or (kind "pretrain") a contrastive encoder with its projection head.

metrics.json is written last, so its presence means every other artifact is
complete; each artifact itself is written to a temporary path and renamed.
"""

import os

from nstudent.export.atomic import write_json
from nstudent.export.saved_model import export_saved_model, save_keras

METRICS = "metrics.json"


def is_finished(out_dir):
    return os.path.exists(os.path.join(out_dir, METRICS))


MODEL_INFO = "model_info.json"
PRETRAIN = "pretrain"  # model_info.json's kind for a contrastive pretraining run


def write_run(out_dir, model, model_config, dataset_info, metrics, crop_fraction=0.0,
              kind="classifier", temperature=None, thresholds=None, **info):
    """`crop_fraction`: the evaluation preprocessing (0: square resize; else centre crop).
    `kind`: classifier (serving returns probabilities and classes) or pretrain (the
    encoder and projection head: serving returns embeddings and projections).
    `temperature`: a calibrated classifier's T (serving returns softmax(logits / T));
    `thresholds`: a multi-label classifier's per-class decision thresholds (serving
    returns sigmoid probabilities and the labels at or above them);
    `info` goes into model_info.json."""
    image_size = model_config.resolved_image_size
    task = getattr(dataset_info, "task", "multiclass")
    write_json(os.path.join(out_dir, MODEL_INFO), dict(
        info, kind=kind, task=task, model=model_config.to_dict(), image_size=image_size,
        eval_crop_fraction=crop_fraction, dataset=dataset_info.to_dict(),
        calibration_temperature=temperature, thresholds=thresholds))
    save_keras(model, os.path.join(out_dir, "model.keras"))
    export_saved_model(model, os.path.join(out_dir, "saved_model"), image_size,
                       model_config.channels, crop_fraction,
                       embeddings=kind == PRETRAIN, temperature=temperature,
                       thresholds=thresholds)
    write_json(os.path.join(out_dir, METRICS), metrics)
