"""The noisy student step: both batches count, both losses are logged, all noise on."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, toy_dataset
from nstudent import data, export, models, pseudo_labels, training
from nstudent.training import NoisyStudent


def _batches(pseudo_labels_seed):
    x_l = random_images(4, 16, 1, seed=1).astype(np.float32)
    y_l = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    x_u = random_images(12, 16, 1, seed=2).astype(np.float32)
    y_u = np.random.default_rng(pseudo_labels_seed).dirichlet(np.ones(4), 12)
    return tf.data.Dataset.from_tensors(((x_l, y_l), (x_u, y_u.astype(np.float32))))


def _start(config):
    keras.utils.set_random_seed(7)
    return models.build_efficientnet(config).trainable_weights


def _one_step(config, pseudo_labels_seed, pseudo_loss_weight=1.0):
    """Weights after one SGD step from a fixed start with fixed noise."""
    keras.utils.set_random_seed(7)
    student = NoisyStudent(models.build_efficientnet(config), pseudo_loss_weight)
    student.compile(optimizer=keras.optimizers.SGD(0.1))
    history = student.fit(_batches(pseudo_labels_seed), epochs=1, verbose=0)
    return [keras.ops.convert_to_numpy(w) for w in student.network.trainable_weights], history.history


def test_step_uses_both_batches_and_logs_both_losses(tiny_config):
    config = tiny_config.replace(dropout=0.3, stochastic_depth=0.3)
    start = [keras.ops.convert_to_numpy(w) for w in _start(config)]
    a, logs = _one_step(config, pseudo_labels_seed=1)
    b, _ = _one_step(config, pseudo_labels_seed=2)
    again, _ = _one_step(config, pseudo_labels_seed=1)
    assert any(not np.allclose(x, y) for x, y in zip(start, a))  # it trained
    for x, y in zip(a, again):  # same data, same noise: same step
        np.testing.assert_allclose(x, y, atol=1e-6)
    # only the pseudo-labels differ, and so do the gradients
    assert any(not np.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
    # with the pseudo loss weighted 0, the pseudo-labels cannot matter
    c, _ = _one_step(config, 1, pseudo_loss_weight=0.0)
    d, _ = _one_step(config, 2, pseudo_loss_weight=0.0)
    for x, y in zip(c, d):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert {"loss", "labeled_loss", "pseudo_loss", "labeled_top1", "pseudo_top1"} <= set(logs)
    assert logs["loss"][0] == pytest.approx(logs["labeled_loss"][0] + logs["pseudo_loss"][0],
                                            rel=1e-5)
    assert logs["pseudo_loss"][0] > 0 and logs["labeled_loss"][0] > 0


def test_student_trains_exports_and_warns_when_smaller(tmp_path, tiny_config, caplog):
    info, splits = toy_dataset(tmp_path / "ds", 24, 4)
    teacher_config = tiny_config.replace(width_scale=0.5)
    teacher = models.build_efficientnet(teacher_config)
    export.write_run(str(tmp_path / "teacher"), teacher, teacher_config, info,
                     {"parameters": teacher.count_params()})
    stage_data = data.StageData(info, splits["train"], splits["test"], labels_per_class=4,
                                dataset="toy")
    config = pseudo_labels.LabelConfig(min_confidence=0.0)
    pseudo_labels.pseudo_label(str(tmp_path / "teacher"), stage_data, config,
                               str(tmp_path / "pl"))
    pl = pseudo_labels.load_pseudo_labels(str(tmp_path / "pl"))
    input_config = data.InputConfig(image_size=16, batch_size=4, randaugment_magnitude=5)
    with caplog.at_level(logging.WARNING):
        metrics = training.train_student(
            str(tmp_path / "student"), stage_data, pl, tiny_config, input_config,
            training.TrainConfig(epochs=2), unlabeled_ratio=2)
    assert "smaller than its teacher" in caplog.text
    assert metrics["stage"] == "student" and metrics["pseudo_labeled_examples"] == pl.records
    assert metrics["steps_per_epoch"] == pl.records // 8
    assert metrics["last_epoch"]["pseudo_loss"] > 0
    assert (tmp_path / "student" / "saved_model" / "saved_model.pb").exists()
    assert (tmp_path / "student" / "model.keras").exists()

    with pytest.raises(data.DataError, match="pseudo-labels .* have 4 classes"):
        other = data.DatasetInfo("five", 5, 1, tuple("abcde"))
        training.train_student(str(tmp_path / "s2"),
                               data.StageData(other, splits["train"], splits["test"], 4),
                               pl, tiny_config, input_config, training.TrainConfig(epochs=1))
    assert not (tmp_path / "s2").exists()
