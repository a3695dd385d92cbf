import keras
import numpy as np
import pytest

from nstudent.models import ModelConfig, block_names, build_efficientnet, stochastic_depth
from nstudent.models.efficientnet import BlockArgs, mbconv_block


def test_b0_parameter_count_matches_keras_applications():
    """5,330,564: Keras' own EfficientNetB0 (the reference layout, 5.3M in the paper)
    less its input Normalization layer's 7 statistics (mean, variance, count), which
    nstudent folds into one Rescaling layer without weights."""
    model = build_efficientnet(ModelConfig("b0", num_classes=1000))
    reference = keras.applications.EfficientNetB0(weights=None)
    normalization = sum(layer.count_params() for layer in reference.layers
                        if isinstance(layer, keras.layers.Normalization))
    assert normalization == 7
    assert model.count_params() == reference.count_params() - normalization == 5_330_564


def test_scaling_knobs_change_size_and_depth():
    small = build_efficientnet(ModelConfig("b0", 10, width_scale=0.5, depth_scale=0.5))
    b0 = build_efficientnet(ModelConfig("b0", 10))
    b2 = build_efficientnet(ModelConfig("b2", 10))
    assert small.count_params() < b0.count_params() < b2.count_params()
    assert len(block_names(small)) < len(block_names(b0)) == 16 < len(block_names(b2))


def test_drop_rates_rise_linearly_to_flag():
    model = build_efficientnet(ModelConfig("b0", 10, stochastic_depth=0.3))
    blocks = block_names(model)
    drops = {l.name.split("_")[0]: l.rate for l in model.layers if l.name.endswith("drop_path")}
    assert len(drops) == 9  # B0's residual blocks
    for name, rate in drops.items():
        # Linear in depth: 0 at the first block, the flag at the last (block7a).
        assert rate == pytest.approx(0.3 * blocks.index(name) / (len(blocks) - 1))
    assert max(drops.values()) == pytest.approx(0.3 * 14 / 15)  # block6d
    top = model.get_layer("top_dropout")
    assert top.rate == pytest.approx(0.2)  # B0's default
    assert build_efficientnet(ModelConfig("b7", 10)).get_layer("top_dropout").rate == 0.5


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="Unknown EfficientNet variant 'b9'"):
        ModelConfig("b9", 10)


def test_any_input_resolution(tiny_model):
    for size in (16, 40):
        out = tiny_model(np.zeros((2, size, size, 1), "float32"))
        assert out.shape == (2, 4)


def _residual_block(rate):
    args = BlockArgs(3, 1, 8, 8, 2, 1)
    inputs = keras.Input((6, 6, 8))
    return keras.Model(inputs, mbconv_block(inputs, args, rate, "t_"))


def test_stochastic_depth_drops_whole_samples_independently():
    keras.utils.set_random_seed(1)
    block = _residual_block(0.5)
    x = np.random.default_rng(0).normal(size=(256, 6, 6, 8)).astype("float32")
    y = np.asarray(block(x, training=True))
    same = np.all(np.isclose(y, x), axis=(1, 2, 3))  # branch dropped: output == input
    changed = ~np.any(np.isclose(y, x), axis=(1, 2, 3))
    assert np.all(same | changed), "a sample was dropped only in part"
    assert 0.3 < same.mean() < 0.7, "drop rate 0.5 should drop about half the samples"
    y2 = np.asarray(block(x, training=True))
    same2 = np.all(np.isclose(y2, x), axis=(1, 2, 3))
    assert np.any(same != same2), "the drop pattern should differ between calls"


def test_inference_is_deterministic(tiny_model):
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 1)).astype("float32")
    a = np.asarray(tiny_model(x, training=False))
    b = np.asarray(tiny_model(x, training=False))
    np.testing.assert_array_equal(a, b)
    block = _residual_block(0.5)
    h = np.random.default_rng(1).normal(size=(64, 6, 6, 8)).astype("float32")
    np.testing.assert_array_equal(np.asarray(block(h)), np.asarray(block(h)))


def test_stochastic_depth_layer_scales_kept_samples():
    layer = stochastic_depth(0.25)
    y = np.asarray(layer(np.ones((512, 2, 2, 3), "float32"), training=True))
    kept = y[:, 0, 0, 0] > 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert np.all(y[~kept] == 0)


def test_every_layer_supports_jit(tiny_model):
    # A layer with supports_jit=False (e.g. an augmentation layer) would silently
    # turn off XLA for the whole training step.
    assert all(getattr(l, "supports_jit", True) for l in tiny_model._flatten_layers())
