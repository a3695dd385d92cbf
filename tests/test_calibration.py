"""Calibration figures and temperature scaling against hand computations, and
per-class cut-offs from a precision target on hand tables."""

import math

import numpy as np
import pytest
import tensorflow as tf

from nstudent.errors import InputError
from nstudent.evaluation import calibration
from nstudent.pseudo_labels.cutoffs import NOTHING, precision_cutoffs

# 4 images, 3 classes; confidences away from the 15 bins' edges
PROBS = np.array([[0.90, 0.05, 0.05],   # label 0: right at 0.90
                  [0.90, 0.05, 0.05],   # label 1: wrong at 0.90
                  [0.61, 0.29, 0.10],   # label 0: right at 0.61
                  [0.41, 0.35, 0.24]])  # label 2: wrong at 0.41
LABELS = np.array([0, 1, 0, 2])


def test_ece_nll_and_brier_match_a_hand_computation():
    # bins (13/15, 14/15]: 2 images, accuracy 0.5, confidence 0.9; (9/15, 10/15]: one,
    # 1 vs 0.61; (6/15, 7/15]: one, 0 vs 0.41
    ece = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.61) + 1 / 4 * abs(0 - 0.41)
    assert calibration.expected_calibration_error(PROBS, LABELS) == pytest.approx(ece, abs=1e-12)
    nll = -(math.log(0.9) + math.log(0.05) + math.log(0.61) + math.log(0.24)) / 4
    assert calibration.negative_log_likelihood(PROBS, LABELS) == pytest.approx(nll, abs=1e-12)
    brier = ((0.1 ** 2 + 0.05 ** 2 + 0.05 ** 2) + (0.9 ** 2 + 0.95 ** 2 + 0.05 ** 2)
             + (0.39 ** 2 + 0.29 ** 2 + 0.1 ** 2) + (0.41 ** 2 + 0.35 ** 2 + 0.76 ** 2)) / 4
    assert calibration.brier_score(PROBS, LABELS) == pytest.approx(brier, abs=1e-12)
    with pytest.raises(InputError, match="one label per example"):
        calibration.expected_calibration_error(PROBS, LABELS[:3])


def _overconfident(seed=0, n=4000, classes=5, scale=3.0):
    """Logits `scale` times too large: labels drawn from softmax(logits / scale)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes)) * scale
    p = calibration.softmax(logits, scale)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return logits, labels


def _grid_temperature(logits, labels):
    """An independent search: NLL by log-softmax on a fine grid of T."""
    best = None
    for t in np.linspace(0.5, 8.0, 7501):
        z = logits / t
        log_p = z - z.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        nll = -log_p[np.arange(len(labels)), labels].mean()
        if best is None or nll < best[0]:
            best = (nll, t)
    return best[1]


def test_fitted_temperature_equals_a_grid_search_and_keeps_the_classes():
    logits, labels = _overconfident()
    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(_grid_temperature(logits, labels), rel=0.01)
    assert 2.5 < t < 3.5  # the scale the logits were inflated by
    before = calibration.calibration_figures(logits, labels)
    after = calibration.calibration_figures(logits, labels, t)
    assert after["accuracy"] == before["accuracy"]  # argmax unchanged
    assert np.array_equal(calibration.softmax(logits, t).argmax(1), logits.argmax(1))
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    # under-confident logits get T < 1
    assert calibration.fit_temperature(logits / 9.0, labels) == pytest.approx(t / 9.0,
                                                                            rel=0.01)


def test_reliability_diagram_is_written_whole(tmp_path):
    logits, labels = _overconfident(n=500)
    path = str(tmp_path / "reliability.png")
    calibration.reliability_diagram(calibration.softmax(logits), labels, path, "teacher")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["reliability.png"]


# Held-out predictions: (confidence, predicted class, true class)
HELD_OUT = [
    # class 0: precision from the top 1, 1, .667, .75, .8, .667, .571 (not monotone)
    (0.95, 0, 0), (0.90, 0, 0), (0.80, 0, 1), (0.70, 0, 0), (0.60, 0, 0), (0.50, 0, 2),
    (0.40, 0, 1),
    # class 1: two predictions only
    (0.90, 1, 1), (0.80, 1, 1),
    # class 2: its most confident prediction is wrong
    (0.90, 2, 0), (0.80, 2, 2), (0.70, 2, 2),
    # class 3: a tie at 0.9 (one right, one wrong), then a right one
    (0.90, 3, 3), (0.90, 3, 0), (0.80, 3, 3),
]


def _cutoffs(p, min_count=3):
    conf, pred, true = (np.array(c) for c in zip(*HELD_OUT))
    return precision_cutoffs(conf, pred, true, 5, p, min_count, 0.3)


def test_precision_cutoffs_of_a_hand_table():
    c = _cutoffs(0.8)
    # class 0: 0.6 reaches 0.8 again, but 0.8 and 0.7 fall below: 0.9 is the lowest
    assert (c[0].cutoff, c[0].source, c[0].held_out, c[0].precision) == (
        0.9, "precision", 7, 1.0)
    assert (c[1].cutoff, c[1].source, c[1].held_out) == (0.3, "global", 2)  # < min_count
    assert (c[2].cutoff, c[2].source, c[2].precision) == (NOTHING, "none", 0.0)
    assert (c[3].cutoff, c[3].source) == (NOTHING, "none")  # 0.5 at the tie
    assert (c[4].cutoff, c[4].source, c[4].held_out) == (0.3, "global", 0)
    c = _cutoffs(0.6)
    assert c[0].cutoff == 0.5 and c[0].precision == pytest.approx(4 / 6)
    assert c[2].source == "none"
    c = _cutoffs(0.5)
    assert (c[3].cutoff, c[3].precision) == (0.8, pytest.approx(2 / 3))
    assert c[0].cutoff == 0.4
    assert _cutoffs(0.5, min_count=2)[1].cutoff == 0.8  # enough predictions now
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InputError, match="--min_precision (must be in|above 0)"):
            _cutoffs(bad)


def test_a_calibrated_teacher_serves_calibrated_probabilities(toy_folder, tmp_path):
    """--calibration=temperature: T fitted on the held-out labeled images; metrics.json
    has the test figures before and after (accuracy unchanged); model_info.json has T;
    serving_default returns softmax(logits / T) with the classes unchanged; the
    pictures are written; evaluate.py reports ECE with T."""
    import json
    import os

    from nstudent import data
    from nstudent.evaluation import load_classifier
    from test_pipeline import _flags
    from test_tools import run_tool

    out = str(tmp_path / "t")
    flags = [*_flags(toy_folder, out)[:-2], "--labels_per_class=20",
             "--validation_fraction=0.25"]
    result = run_tool("train.py", *flags, "--calibration=temperature", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    info = json.load(open(os.path.join(out, "model_info.json")))
    cal = metrics["calibration"]
    t = cal["temperature"]
    assert info["calibration_temperature"] == t
    assert calibration.T_RANGE[0] < t < calibration.T_RANGE[1]
    assert cal["fitted_on"] == info["held_out"] == {
        "dataset": f"folder:{toy_folder}", "labels_per_class": 20, "seed": 0,
        "validation_fraction": 0.25, "examples": 20}  # 5 of each class's 20
    assert cal["test_after"]["accuracy"] == cal["test_before"]["accuracy"]
    # the held-out top-1 recorded is the exported model's: its logits on those 20 images
    toy_info, splits = data.load(f"folder:{toy_folder}", ("train",), channels=1)
    held = data.StageData(toy_info, splits["train"], labels_per_class=20,
                          validation_fraction=0.25).validation_indices
    exported = load_classifier(out, prefer="keras")
    logits, onehot = calibration.predicted_logits(exported.logits, data.eval_dataset(
        splits["train"].dataset(held), toy_info.num_classes,
        data.InputConfig.for_evaluation(info["image_size"], 8, exported.crop_fraction)))
    assert metrics["validation_examples"] == 20
    assert metrics["validation_top1"] == pytest.approx(
        np.mean(logits.argmax(1) == onehot.argmax(1)), abs=1e-6)
    assert cal["held_out_after"]["nll"] <= cal["held_out_before"]["nll"] + 1e-9
    for name in ("confusion.png", "reliability.png", "reliability_calibrated.png"):
        assert open(os.path.join(out, name), "rb").read(4) == b"\x89PNG"
    images = np.stack([x for x, _ in data.load(f"folder:{toy_folder}", channels=1)[1][
        "test"].dataset().take(8).as_numpy_iterator()])
    keras_model = load_classifier(out, prefer="keras")
    logits = keras_model.logits(images.astype(np.float32))
    serve = tf.saved_model.load(os.path.join(out, "saved_model")).signatures[
        "serving_default"]
    served = serve(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(served, calibration.softmax(logits, t), atol=1e-5)
    np.testing.assert_array_equal(served.argmax(1), logits.argmax(1))
    np.testing.assert_allclose(keras_model.probabilities(images.astype(np.float32)),
                               served, atol=1e-5)
    result = run_tool("evaluate.py", f"--model={out}", f"--dataset=folder:{toy_folder}",
                      "--channels=1")
    assert result.returncode == 0 and f"calibrated T={t:.3f}" in result.stdout
    refused = run_tool("train.py", *flags[:-1], "--calibration=temperature",
                       f"--out={tmp_path / 'no'}")
    assert refused.returncode == 2 and "set --validation_fraction" in refused.stderr
