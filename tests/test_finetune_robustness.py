"""Resolution fine-tuning with frozen shallow layers; corruptions and FGSM."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, toy_dataset
from nstudent import data, evaluation, export, models, training
from nstudent.evaluation import CORRUPTIONS, corrupt, fgsm
from nstudent.training.finetune import finetune, freeze, min_resolution


@pytest.fixture
def toy_run(tmp_path, tiny_config):
    info, splits = toy_dataset(tmp_path / "ds", 12, 3)
    model = models.build_efficientnet(tiny_config)
    run = str(tmp_path / "gen0")
    export.write_run(run, model, tiny_config, info, {"parameters": model.count_params()})
    return run, model, info, splits


def _weights_by_layer(model):
    return {layer.name: [keras.ops.convert_to_numpy(w) for w in layer.weights]
            for layer in model.layers if layer.weights}


def test_finetune_keeps_frozen_layers_bit_identical(toy_run, tmp_path):
    run, model, info, splits = toy_run
    before = _weights_by_layer(model)
    out = str(tmp_path / "gen0" / "finetuned_32")
    metrics = finetune(run, out, data.StageData(info, splits["train"], splits["test"]), 32,
                       data.InputConfig(image_size=32, batch_size=8),
                       training.TrainConfig(epochs=2, learning_rate=0.01), freeze_blocks=2)
    tuned = keras.saving.load_model(out + "/model.keras", compile=False)
    frozen = set(metrics["frozen_layers"])
    assert {"stem_conv", "stem_bn"} <= frozen
    assert any(n.startswith("block1a_") for n in frozen)
    assert not any(n.startswith("block7") for n in frozen)
    changed = 0
    for name, weights in _weights_by_layer(tuned).items():
        for old, new in zip(before[name], weights):
            if name in frozen:  # kernels and batch-norm statistics alike
                np.testing.assert_array_equal(old, new, err_msg=name)
            else:
                changed += not np.array_equal(old, new)
    assert changed > 0 and "top_conv" not in frozen
    assert metrics["resolution"] == 32 and metrics["stage"] == "finetune"
    info_json = export.read_json(out + "/model_info.json")
    assert info_json["image_size"] == 32
    assert evaluation.load_classifier(out).image_size == 32


def test_finetune_bad_input(toy_run, tmp_path, tiny_config):
    run, model, info, splits = toy_run
    args = (data.StageData(info, splits["train"], splits["test"]),)
    cfg = data.InputConfig(image_size=24, batch_size=8)
    with pytest.raises(ValueError, match="below the model's minimum of 32"):
        finetune(run, str(tmp_path / "x"), *args, 16, cfg, training.TrainConfig(epochs=1))
    assert min_resolution(tiny_config) == 32
    with pytest.raises(ValueError, match="--freeze_blocks=99, but the model has"):
        freeze(model, 99)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither"):
        finetune(str(tmp_path / "empty"), str(tmp_path / "y"), *args, 48, cfg,
                 training.TrainConfig(epochs=1))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruptions_change_images_more_with_severity(name):
    image = tf.constant(random_images(1, 32, 3, seed=5)[0] // 2 + 64)
    seed = tf.constant([1, 2])
    diffs = []
    for severity in (1, 5):
        out = corrupt(image, name, severity, seed)
        assert out.shape == image.shape and out.dtype == tf.uint8
        np.testing.assert_array_equal(out, corrupt(image, name, severity, seed))  # fixed
        diffs.append(np.abs(out.numpy().astype(int) - image.numpy().astype(int)).mean())
    assert 0 < diffs[0] < diffs[1], diffs
    with pytest.raises(ValueError, match="Severity must be 1-5"):
        corrupt(image, name, 6, seed)


def test_fgsm_step_raises_the_loss(tiny_model):
    images = random_images(16, 16, 1, seed=9).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[np.arange(16) % 4]
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    clean = float(loss(labels, tiny_model(images, training=False)))
    adv = fgsm(tiny_model, images, labels, 8 / 255)
    assert np.abs(adv - images).max() <= 8.0 + 1e-4 and adv.min() >= 0 and adv.max() <= 255
    assert float(loss(labels, tiny_model(adv, training=False))) > clean
    assert evaluation.parse_epsilon("2/255") == pytest.approx(2 / 255)
    with pytest.raises(ValueError, match="outside"):
        evaluation.parse_epsilon("3")
