"""A resumed stage trains on the batches and the noise an uninterrupted one would.

A probe model records a fingerprint of every batch it is fed (after the device
noise, which it holds as the training wrappers do) in a non-trainable variable,
so the record travels through the backup like any weight. One run goes through;
another is stopped after a backup and a few more steps (lost, as after a kill),
then a fresh model and backup resume it. Both records must be equal.
"""

import keras
import numpy as np
import pytest
from keras import ops

from conftest import random_images
from nstudent import data
from nstudent.augment import DeviceNoise
from nstudent.data.sources import in_memory_split
from nstudent.training.backup import StageBackup
from nstudent.training.supervised import fit

EPOCHS, STEPS, BATCH = 3, 5, 4
BACKUP_EVERY = 3


class Probe(keras.Model):
    """Records sum(images x fixed weights) + labels . weights of every step's batch
    (order inside the batch included), the images after `noise` when given."""

    def __init__(self, noise=None, **kwargs):
        super().__init__(**kwargs)
        self.noise = noise
        self.dense = keras.layers.Dense(1)
        rng = np.random.default_rng(0)
        self.pixel_weights = ops.convert_to_tensor(
            rng.uniform(0.5, 1.5, (BATCH, 16, 16, 1)).astype(np.float32))
        self.label_weights = ops.convert_to_tensor(
            rng.uniform(1, 2, (BATCH, 4)).astype(np.float32))
        self.seen = self.add_weight(shape=(EPOCHS * STEPS,), initializer="zeros",
                                    trainable=False, name="seen")
        self.step = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                    name="step")

    def call(self, x, training=False):
        return self.dense(ops.reshape(ops.cast(x, "float32"), (ops.shape(x)[0], -1)))

    def train_step(self, batch):
        x, y = batch
        if self.noise is not None:
            x = self.noise(x, training=True)
        x = ops.cast(x, "float32")
        print_ = ops.sum(x * self.pixel_weights) + ops.sum(y * self.label_weights)
        i = ops.cast(self.step, "int32")
        self.seen.assign(self.seen + ops.one_hot(i, EPOCHS * STEPS) * print_)
        self.step.assign(self.step + 1.0)
        return {"steps": self.step}


class Killed(Exception):
    pass


class KilledAfter(StageBackup):
    """A backup callback whose process dies after `steps` steps in all."""

    def __init__(self, *args, steps, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_at, self.trained = steps, 0

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self.trained += 1
        if self.trained == self.kill_at:
            raise Killed()


def _run(tmp_path, impl, backup):
    keras.utils.set_random_seed(0)
    images = random_images(40, 16, 1, seed=1)
    split = in_memory_split("train", images, np.arange(40) % 4)
    info = data.DatasetInfo("toy", 4, 1, tuple("abcd"))
    stage_data = data.StageData(info, split, labels_per_class=3, seed=0)
    config = data.InputConfig(
        image_size=16, batch_size=BATCH, randaugment_impl=impl, randaugment_magnitude=9,
        randaugment_layers=2 if impl == "device" else 0, random_flip=impl == "device",
        crop_padding=2 if impl == "device" else 0, deterministic_order=True)
    noise = DeviceNoise(2, 9, random_flip=True, crop_padding=2, seed=0) if (
        impl == "device") else None
    model = Probe(noise)
    model(np.zeros((BATCH, 16, 16, 1), np.float32))  # built
    model.compile(optimizer=keras.optimizers.SGD(0.0))

    def stream(start):
        return data.train_dataset(stage_data.labeled(BATCH, shuffle=True), 4, config,
                                  seed=0, num_examples=12, shuffled=True, start=start)

    fit(model, stream, STEPS, EPOCHS, None, backup)
    return keras.ops.convert_to_numpy(model.seen)


@pytest.mark.parametrize("impl", ["keras_cv", "device"])
# killed at step 7 (epoch 2, step 2: the last backup is epoch 1's end) or 10 (epoch
# 2's last step: the last backup is epoch 2, step 3)
@pytest.mark.parametrize("kill_at,resume_at", [(7, (1, 0)), (10, (1, 3))])
def test_resumed_stage_is_fed_what_an_uninterrupted_one_is(tmp_path, impl, kill_at,
                                                           resume_at):
    """keras_cv: host noise off (its draws have no fixed order to resume); device:
    RandAugment, flip and crop in the probe, their generator restored."""
    whole = _run(tmp_path, impl, StageBackup(str(tmp_path / "a"), {}, 0, STEPS))
    assert np.all(whole != 0) and len(np.unique(whole)) == len(whole)
    with pytest.raises(Killed):
        _run(tmp_path, impl, KilledAfter(str(tmp_path / "b"), {}, BACKUP_EVERY, STEPS,
                                          steps=kill_at))
    resumed_backup = StageBackup(str(tmp_path / "b"), {}, BACKUP_EVERY, STEPS)
    resumed = _run(tmp_path, impl, resumed_backup)
    assert resumed_backup.resumed_from == dict(zip(("epoch", "step"), resume_at))
    np.testing.assert_allclose(resumed, whole, rtol=1e-6)
