"""The noisy student step: both batches count, both losses are logged, all noise on."""

import dataclasses
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, toy_dataset
from nstudent import data, export, models, pseudo_labels, training
from nstudent.data.sources import in_memory_split
from nstudent.errors import InputError
from nstudent.evaluation import load_classifier
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
            training.TrainConfig(epochs=2), training.StudentConfig(unlabeled_ratio=2))
    assert "smaller than its teacher" in caplog.text
    assert metrics["stage"] == "student" and metrics["pseudo_labeled_examples"] == pl.records
    assert metrics["teacher_digest"] == pl.settings["teacher_digest"] == load_classifier(
        str(tmp_path / "teacher")).digest
    assert metrics["steps_per_epoch"] == pl.records // 8
    assert metrics["last_epoch"]["pseudo_loss"] > 0
    # the reference's loss by default: labeled CE + unlabeled_ratio x pseudo CE
    assert metrics["pseudo_loss_weight"] == 2.0
    last = metrics["last_epoch"]
    assert last["loss"] == pytest.approx(last["labeled_loss"] + 2 * last["pseudo_loss"],
                                         rel=1e-4)
    assert (tmp_path / "student" / "saved_model" / "saved_model.pb").exists()
    assert (tmp_path / "student" / "model.keras").exists()

    with pytest.raises(data.DataError, match="pseudo-labels .* have 4 classes"):
        other = data.DatasetInfo("five", 5, 1, tuple("abcde"))
        training.train_student(str(tmp_path / "s2"),
                               data.StageData(other, splits["train"], splits["test"], 4),
                               pl, tiny_config, input_config, training.TrainConfig(epochs=1))
    assert not (tmp_path / "s2").exists()


# --- The noise, as the student stage wires it ---
#
# A labeled batch holds the whole labeled set and a pseudo-labeled batch the whole
# pseudo-labeled set (each pass is a permutation of it), so every batch is the same
# multiset: without noise every step sees the same input and (at a learning rate of
# 1e-12) gives the same losses, to float rounding. Crop and flip are off (they alone
# would make images differ). What makes the losses differ is noise, and each
# stream's loss is logged apart.

NOISE_FREE = dict(randaugment_layers=0, random_flip=False, crop_padding=0)
# The spread of the losses of STEPS steps. Noise moved a loss between two steps by
# 0.009-2 (2026-11-29; KerasCV's draws are not reproducible, so over four steps the
# spread is far above the threshold); the order of a batch alone, through batch
# norm's sums, by up to 2e-5 at full depth: a threshold and a tolerance between.
STEPS = 4
LOSS_DIFFERS = 2e-3
SAME_LOSS = 5e-4


def _pseudo_labeled(tmp_path, tiny_config, labels_per_class, per_class=0, seed=4):
    """(stage data, pseudo-labels): 64 random images, `labels_per_class` of them
    labeled per class, the rest labeled by an untrained teacher in tmp_path/teacher."""
    images = random_images(64, 16, 1, seed=seed)
    split = in_memory_split("train", images, np.arange(64) % 4)
    info = data.DatasetInfo("toy", 4, 1, tuple("abcd"))
    teacher = models.build_efficientnet(tiny_config)
    export.write_run(str(tmp_path / "teacher"), teacher, tiny_config, info,
                     {"parameters": teacher.count_params()})
    stage_data = data.StageData(info, split, split, labels_per_class=labels_per_class,
                                dataset="toy")
    pseudo_labels.pseudo_label(str(tmp_path / "teacher"), stage_data,
                               pseudo_labels.LabelConfig(min_confidence=0.0,
                                                         per_class=per_class),
                               str(tmp_path / "pl"))
    return stage_data, pseudo_labels.load_pseudo_labels(str(tmp_path / "pl"))


def _whole_set_stage(tmp_path, tiny_config, model_config, input_config, **student):
    """A StudentStage whose batches are its whole sets: 8 labeled images (2 per class,
    batch 8) and 8 pseudo-labeled images per class the teacher predicts; `student`:
    more StudentConfig fields."""
    stage_data, pl = _pseudo_labeled(tmp_path, tiny_config, 2, per_class=8)
    train_config = training.TrainConfig(epochs=STEPS, steps_per_epoch=1, learning_rate=1e-12,
                                        weight_decay=0.0, warmup_epochs=0.0)
    keras.utils.set_random_seed(0)
    return training.StudentStage(str(tmp_path / "student"), stage_data, pl, model_config,
                                 input_config, train_config,
                                 training.StudentConfig(unlabeled_ratio=pl.records // 8,
                                                        **student))


def _steps(stage):
    """(labeled losses, pseudo losses) of STEPS consecutive steps of the stage's
    student on the stage's stream."""
    logs = stage.student.fit(stage.train_ds(0), steps_per_epoch=1, epochs=STEPS,
                             verbose=0).history
    return logs["labeled_loss"], logs["pseudo_loss"]


def _spread(losses):
    return max(losses) - min(losses)


def _differs(losses):
    return _spread(losses) > LOSS_DIFFERS


def _unchanged(images, clean):
    """The fraction of `images` that are, pixel for pixel, one of the `clean` ones."""
    clean = {np.asarray(c, np.uint8).tobytes() for c in clean}
    rounded = np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
    return np.mean([x.tobytes() in clean for x in rounded])


@pytest.mark.parametrize("impl", ["keras_cv", "device"])
def test_student_stage_noises_labeled_and_pseudo_labeled_images(tmp_path, tiny_config,
                                                                impl):
    """RandAugment reaches both streams as the stage wires them: in tf.data (keras_cv),
    or on the device inside the step (the batches stay clean; the network's input
    is noised), and steps then differ with the network's own noise off."""
    input_config = data.InputConfig(image_size=16, batch_size=8, randaugment_layers=2,
                                    randaugment_magnitude=9, randaugment_impl=impl,
                                    random_flip=False, crop_padding=0,
                                    deterministic_order=True)
    quiet = tiny_config.replace(dropout=0.0, stochastic_depth=0.0)
    stage = _whole_set_stage(tmp_path, tiny_config, quiet, input_config)
    clean_labeled = [x for x, _ in stage.stage_data.labeled().as_numpy_iterator()]
    clean_pseudo = [x for x, _ in stage.pseudo.dataset().as_numpy_iterator()]
    (x_labeled, _), (x_pseudo, _) = next(stage.train_ds(0).as_numpy_iterator())
    if impl == "device":  # the stream is clean; the step's input goes through the noise
        assert _unchanged(x_labeled, clean_labeled) == _unchanged(x_pseudo, clean_pseudo) == 1
        fed = np.asarray(stage.student.network.noise(
            stage.student.step_inputs(((x_labeled, 0), (x_pseudo, 0))), training=True))
        x_labeled, x_pseudo = fed[:len(x_labeled)], fed[len(x_labeled):]
    # N=2 operations at M=9: an image escapes unchanged when both are no-ops on it
    # (KerasCV: under 8%; its draws are not reproducible), so 6 of 8 never do
    assert _unchanged(x_labeled, clean_labeled) < 0.75
    assert _unchanged(x_pseudo, clean_pseudo) < 0.75
    labeled, pseudo = _steps(stage)
    assert _differs(labeled), labeled
    assert _differs(pseudo), pseudo


def test_nopseudo_noise_noises_the_labeled_images_only(tmp_path, tiny_config):
    """The paper's ablation (--nopseudo_noise): RandAugment on the labeled stream, the
    pseudo-labeled images exactly as the teacher saw them; refused with device noise,
    which noises the whole batch."""
    input_config = data.InputConfig(image_size=16, batch_size=8, randaugment_layers=2,
                                    randaugment_magnitude=9, randaugment_impl="keras_cv",
                                    random_flip=False, crop_padding=0,
                                    deterministic_order=True)
    quiet = tiny_config.replace(dropout=0.0, stochastic_depth=0.0)
    stage = _whole_set_stage(tmp_path, tiny_config, quiet, input_config, pseudo_noise=False)
    clean_labeled = [x for x, _ in stage.stage_data.labeled().as_numpy_iterator()]
    clean_pseudo = [x for x, _ in stage.pseudo.dataset().as_numpy_iterator()]
    for (x_labeled, _), (x_pseudo, _) in stage.train_ds(0).take(2).as_numpy_iterator():
        assert _unchanged(x_labeled, clean_labeled) < 0.75
        assert _unchanged(x_pseudo, clean_pseudo) == 1
    assert _differs(_steps(stage)[0])
    device = dataclasses.replace(input_config, randaugment_impl="device")
    with pytest.raises(InputError, match="--nopseudo_noise needs the host's noise"):
        _whole_set_stage(tmp_path / "device", tiny_config, quiet, device,
                         pseudo_noise=False)


@pytest.mark.parametrize("noise", ["dropout", "stochastic_depth", "none"])
def test_student_step_trains_the_network_with_its_noise(tmp_path, tiny_config, noise):
    """Dropout and stochastic depth alone (one at a time; no input noise) make steps
    differ; with neither they do not, so the test can tell."""
    rates = {"dropout": 0.0, "stochastic_depth": 0.0}
    if noise in rates:
        rates[noise] = 0.5
    # full depth: at depth 0.25 no block is residual, so there is no stochastic depth
    config = tiny_config.replace(depth_scale=1.0, **rates)
    input_config = data.InputConfig(image_size=16, batch_size=8, **NOISE_FREE)
    labeled, pseudo = _steps(_whole_set_stage(tmp_path, tiny_config, config,
                                                         input_config))
    if noise == "none":
        assert _spread(labeled) < SAME_LOSS and _spread(pseudo) < SAME_LOSS, (labeled,
                                                                                pseudo)
    else:
        assert _differs(labeled) and _differs(pseudo), (labeled, pseudo)


def test_student_stream_resumes_at_a_step(tmp_path, tiny_config):
    """train_ds(start) is the stream an uninterrupted run reaches after `start` steps,
    in both streams (the order deterministic, no host noise)."""
    stage_data, pl = _pseudo_labeled(tmp_path, tiny_config, 6, seed=5)
    input_config = data.InputConfig(image_size=16, batch_size=4, deterministic_order=True,
                                    **NOISE_FREE)
    stage = training.StudentStage(str(tmp_path / "s"), stage_data, pl, tiny_config,
                                  input_config, training.TrainConfig(epochs=1))
    batches = list(stage.train_ds(0).take(9).as_numpy_iterator())
    resumed = list(stage.train_ds(5).take(4).as_numpy_iterator())
    for a, b in zip(batches[5:], resumed):
        for x, y in zip(a, b):  # (labeled, pseudo) x (images, labels)
            np.testing.assert_array_equal(x[0], y[0])
            np.testing.assert_array_equal(x[1], y[1])
    assert not np.array_equal(batches[0][0][0], batches[5][0][0])


def test_init_from_teacher_refuses_a_teacher_retrained_since_it_labeled(tmp_path,
                                                                       tiny_config):
    input_config = data.InputConfig(image_size=16, batch_size=8, **NOISE_FREE)
    stage = _whole_set_stage(tmp_path, tiny_config, tiny_config, input_config)
    teacher_dir = str(tmp_path / "teacher")
    teacher = load_classifier(teacher_dir, prefer="keras").keras_model
    args = (str(tmp_path / "s2"), stage.stage_data, stage.pseudo, tiny_config,
            input_config, training.TrainConfig(epochs=1))
    # the teacher that labeled
    training.StudentStage(*args, training.StudentConfig(init_from_teacher=True))
    kernel = teacher.get_layer("logits").kernel
    kernel.assign(kernel * 2.0)
    export.write_run(teacher_dir, teacher, tiny_config, stage.stage_data.info, {})
    old, new = stage.pseudo.settings["teacher_digest"], load_classifier(teacher_dir).digest
    with pytest.raises(InputError, match=f"weights digest {new[:16]}.*made by weights "
                                         f"{old[:16]}"):
        training.StudentStage(*args, training.StudentConfig(init_from_teacher=True))


@pytest.mark.parametrize("total, natural, epochs, per_epoch", [
    (2000, 145, 16, 125),  # 14 epochs would not split 2,000 evenly; 16 do
    (2000, 31, 80, 25),
    (2000, 468, 5, 400),
    (7, 3, 7, 1),  # a prime budget: one step an epoch
    (12, 100, 1, 12),  # under one pass: one epoch of the budget
])
def test_a_step_budget_splits_into_equal_epochs(total, natural, epochs, per_epoch):
    config = training.TrainConfig(epochs=3, total_steps=total).resolve(natural)
    assert (config.epochs, config.steps_per_epoch) == (epochs, per_epoch)
    assert config.resolve(natural) == config  # resolving twice changes nothing
    plain = training.TrainConfig(epochs=3).resolve(natural)
    assert (plain.epochs, plain.steps_per_epoch) == (3, natural)
