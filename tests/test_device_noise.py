"""RandAugment, flip and crop on the device: per-image choices, exact no-ops, training."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from nstudent import augment, data, models
from nstudent.augment.device import DeviceNoise, autocontrast, equalize
from nstudent.training.steps import Noised, with_device_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _gradient_images(n, size=16):
    """Identical colour images spanning [60, 180]: every operation visibly changes them."""
    ramp = np.linspace(60, 180, size, dtype=np.float32)
    image = np.stack([ramp[None, :] + 0 * ramp[:, None], ramp[:, None] + 0 * ramp[None, :],
                      (ramp[None, :] + ramp[:, None]) / 2], axis=-1)
    image[4:9, 3:7] = [170, 70, 120]  # an asymmetric patch, so no warp maps it to itself
    return np.repeat(np.round(image)[None], n, axis=0).astype(np.uint8)


def test_no_operations_is_exactly_the_input():
    images = _gradient_images(4)
    out = _numpy(DeviceNoise(num_ops=0, random_flip=False, seed=1)(images, training=True))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, images)
    # inference never augments
    out = _numpy(DeviceNoise(num_ops=2, crop_padding=2, seed=1)(images, training=False))
    np.testing.assert_array_equal(out, images)


def test_operations_are_drawn_per_image():
    # One operation per image at full magnitude: only "identity" leaves an image as it
    # was, so about 1 in 14 come out unchanged. Drawn once per batch (as Keras'
    # RandAugment does) it would be all of them or none.
    images = _gradient_images(512)
    layer = DeviceNoise(num_ops=1, magnitude=10, random_flip=False, seed=3)
    out = _numpy(layer(images, training=True))
    unchanged = np.all(np.abs(out - images) < 1e-3, axis=(1, 2, 3))
    assert 10 < unchanged.sum() < 90, unchanged.sum()
    assert out.min() >= 0 and out.max() <= 255
    # the seed generator moves on: the next call draws anew
    again = _numpy(layer(images, training=True))
    assert not np.allclose(again, out)


def test_flip_and_padded_crop():
    images = _gradient_images(64)
    flipped = _numpy(DeviceNoise(num_ops=0, random_flip=True, seed=0)(images, training=True))
    mirrored = np.all(np.abs(flipped - images[:, :, ::-1]) < 1e-3, axis=(1, 2, 3))
    kept = np.all(np.abs(flipped - images) < 1e-3, axis=(1, 2, 3))
    assert np.all(mirrored | kept) and 10 < mirrored.sum() < 54

    p = 2
    cropped = _numpy(DeviceNoise(num_ops=0, random_flip=False, crop_padding=p, seed=0)(
        images, training=True))
    shifts = set()
    for out in cropped:  # every output is the input moved by whole pixels, at most p
        match = [(dy, dx) for dy in range(-p, p + 1) for dx in range(-p, p + 1)
                 if np.allclose(out[p:-p, p:-p],
                                images[0, p + dy:16 - p + dy, p + dx:16 - p + dx], atol=1e-3)]
        assert match, "an output is not a shifted crop of its input"
        shifts.add(match[0])
    assert len(shifts) > 5


def test_equalize_and_autocontrast_spread_the_histogram():
    rng = np.random.default_rng(0)
    images = rng.integers(100, 151, (3, 16, 16, 3)).astype(np.float32)
    for op in (equalize, autocontrast):
        out = _numpy(op(keras.ops.convert_to_tensor(images)))
        assert out.min() == 0 and out.max() == pytest.approx(255, abs=0.5)
        # monotone per image and channel: brighter pixels stay at least as bright
        flat_in = images[0, :, :, 0].ravel()
        flat_out = out[0, :, :, 0].ravel()
        order = np.argsort(flat_in, kind="stable")
        assert np.all(np.diff(flat_out[order]) >= -1e-3)
    # a flat image has nothing to spread and is left alone
    flat = np.full((1, 8, 8, 1), 77.0, np.float32)
    np.testing.assert_array_equal(_numpy(equalize(flat)), flat)
    np.testing.assert_array_equal(_numpy(autocontrast(flat)), flat)


def test_device_config_ships_uint8_and_the_model_adds_the_noise(tiny_config):
    config = data.InputConfig(image_size=16, batch_size=4, randaugment_impl="device",
                              crop_padding=2, cache="none")
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 1)).astype(np.uint8)
    examples = tf.data.Dataset.from_tensor_slices((images, np.arange(8) % 4))
    x, y = next(iter(data.train_dataset(examples, 4, config, seed=0)))
    assert x.dtype == tf.uint8 and y.shape == (4, 4)  # no host-side augmentation

    network = models.build_efficientnet(tiny_config)
    assert with_device_noise(network, config.__class__(16, 4)) is network  # host noise
    model = with_device_noise(network, config)
    assert isinstance(model, Noised) and model.network is network
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    before = [w.numpy().copy() for w in network.trainable_weights]
    model.fit(data.train_dataset(examples, 4, config, seed=0), steps_per_epoch=2, verbose=0)
    assert any(not np.allclose(a, w.numpy()) for a, w in zip(before, network.trainable_weights))
    # the exported network never saw the noise layer
    assert not any(isinstance(layer, DeviceNoise) for layer in network.layers)


def test_auto_picks_host_noise_on_cpu():
    assert augment.resolve_impl("auto") == "keras_cv"
    assert augment.resolve_impl("device") == "device"
    with pytest.raises(ValueError, match="runs in the model"):
        augment.make_randaugment(2, 5, "device")


HIDE_TENSORFLOW = """
import runpy, sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError("No module named 'tensorflow'", name=name)
sys.meta_path.insert(0, Hide())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gpu_path_runs_compiled_without_tensorflow():
    """The GPU machine has JAX and no TensorFlow: the numpy-fed, device-noised bench
    must run there, with the whole noisy-student step, and SimCLR's pretraining step
    with its views, under XLA."""
    pytest.importorskip("jax")
    result = subprocess.run(
        [sys.executable, "-c", HIDE_TENSORFLOW, os.path.join(ROOT, "bench", "throughput.py"),
         "--feed=numpy", "--randaugment_impl=device", "--width_scale=0.25",
         "--depth_scale=0.25", "--image_size=16", "--channels=3", "--num_classes=4",
         "--batch_size=8", "--steps=2", "--epochs=2",
         "--only=noisy_student_train,pretrain_train"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert sorted(x["figure"] for x in lines) == ["noisy_student_train", "pretrain_train"]
    for figure in lines:
        assert figure["jit_compile"] is True and figure["tensorflow"] is None
        assert figure["feed"] == "numpy" and figure["randaugment_impl"] == "device"
        assert figure["images_per_second"] > 0 and figure["backend"] == "jax"


def test_device_random_resized_crop_is_a_zoom_of_the_stated_area():
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], (32, 1, 1))
    images = np.repeat(ramp[None], 64, axis=0)
    full = DeviceNoise(num_ops=0, random_flip=False, crop_scale=(1.0, 1.0),
                       crop_ratio=(1.0, 1.0), seed=0)
    np.testing.assert_allclose(_numpy(full(images, training=True)), images, atol=1e-3)
    quarter = DeviceNoise(num_ops=0, random_flip=False, crop_scale=(0.25, 0.25),
                          crop_ratio=(1.0, 1.0), seed=0)
    out = _numpy(quarter(images, training=True))
    # half the side: each output row spans half the ramp, at random places
    spans = out[:, 16, -1, 0] - out[:, 16, 0, 0]
    np.testing.assert_allclose(spans, 255 / 2 * 31 / 31, atol=6)
    starts = out[:, 16, 0, 0]
    assert starts.min() < 40 and starts.max() > 90  # the window moves
    config = data.InputConfig(image_size=16, batch_size=4, randaugment_impl="device",
                              crop="random_resized")
    layer = augment.device_noise(config)
    # training's Inception crop is cut in tf.data at the image's aspect ratio (below);
    # the warp's crop serves SimCLR's views
    assert layer.crop_scale is None and layer.crop_padding == 0


@pytest.mark.parametrize("impl", ["device", "keras_cv", "keras"])
def test_exposed_borders_are_filled_with_the_fill_value_not_reflected(impl):
    """A uniform image stays uniform under every colour operation and under a warp that
    reflects; filled with a constant, what rotate, shear and translate expose shows,
    and it is the fill value (the reference RandAugment's 128, or 0)."""
    image = np.full((16, 16, 3), 200, np.uint8)

    def outputs(fill):
        if impl == "device":
            layer = DeviceNoise(num_ops=2, magnitude=10, random_flip=False, seed=0,
                                fill_value=fill)
            return _numpy(layer(np.repeat(image[None], 300, 0), training=True))
        augment_one = augment.make_randaugment(2, 10, impl, seed=0, fill_value=fill)
        return np.stack([_numpy(augment_one(tf.constant(image, tf.float32)))
                         for _ in range(150)])

    for fill in (128.0, 0.0):  # no colour operation takes 200 to either
        out = outputs(fill)
        uneven = out.reshape(len(out), -1).std(1) > 1.0
        assert uneven.mean() > 0.05, uneven.mean()
        assert np.any(np.abs(out - fill) < 0.5)


def test_random_resized_crop_is_the_same_on_host_and_device_paths():
    """A non-square image (24 x 48): the device path's batches are the host path's
    crops, box for box (same function, same seed), at the image's aspect ratio. With
    the whole image asked for (area 1, aspect 2) both give the whole image, resized."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 48, 1)).astype(np.uint8)
    examples = tf.data.Dataset.from_tensor_slices((np.repeat(image[None], 32, 0),
                                                   np.arange(32) % 4))

    def batches(impl, **crop):
        config = data.InputConfig(image_size=16, batch_size=8, randaugment_impl=impl,
                                  randaugment_layers=0, random_flip=False,
                                  crop="random_resized", cache="none",
                                  deterministic_order=True, **crop)
        ds = data.train_dataset(examples, 4, config, seed=3)
        return np.concatenate([x for x, _ in ds.take(4).as_numpy_iterator()])

    host, device = batches("keras_cv"), batches("device")
    assert device.dtype == np.uint8 and device.shape == (32, 16, 16, 1)
    np.testing.assert_array_equal(device.astype(np.float32), host)
    assert len({x.tobytes() for x in device}) > 20  # boxes differ from image to image
    whole = dict(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 2.0))
    expected = np.asarray(data.pipeline.resize(image, 16))
    for impl in ("keras_cv", "device"):
        for x in batches(impl, **whole):
            np.testing.assert_array_equal(x, expected)
