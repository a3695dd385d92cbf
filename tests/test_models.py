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


# The map side after the stem and each stage, by hand: 'same' padding rounds each
# stride-2 layer up (ceil(28 / 2) = 14, ceil(7 / 2) = 4).
MAP_SIDES = {  # (plan, image size): stem, stages 1-7
    ("small", 32): [16, 16, 16, 16, 8, 8, 4, 4],
    ("small", 28): [14, 14, 14, 14, 7, 7, 4, 4],
    ("imagenet", 32): [16, 16, 8, 4, 2, 2, 1, 1],
    ("imagenet", 224): [112, 112, 56, 28, 14, 14, 7, 7],
}


@pytest.mark.parametrize("plan,size", list(MAP_SIDES))
def test_feature_map_sizes_follow_the_stride_plan(plan, size):
    """feature_map_sizes against a hand table, and the built network's real maps: the
    output of each stage's last block and of the head's convolution."""
    from nstudent.models import describe_feature_maps, feature_map_sizes

    config = ModelConfig("b0", 10, channels=1, image_size=size, width_scale=0.25,
                         depth_scale=0.5, stage_strides=plan)
    sizes = feature_map_sizes(config)
    assert [name for name, _ in sizes] == ["stem"] + [f"block{i}" for i in range(1, 8)]
    assert [side for _, side in sizes] == MAP_SIDES[plan, size]
    model = build_efficientnet(config)
    last_of_stage = {}
    for layer in model.layers:
        if layer.name.startswith("block") and layer.name.endswith(("project_bn", "add")):
            last_of_stage[layer.name[:6]] = layer.name
    names = ["stem_activation"] + [last_of_stage[f"block{i}"] for i in range(1, 8)]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names]
                        + [model.get_layer("top_activation").output])
    maps = probe(np.zeros((1, size, size, 1), "float32"))
    assert [m.shape[1] for m in maps] == MAP_SIDES[plan, size] + [MAP_SIDES[plan, size][-1]]
    assert describe_feature_maps(config).endswith(
        f"block7 {MAP_SIDES[plan, size][-1]}x{MAP_SIDES[plan, size][-1]}")


def test_auto_stride_plan_is_small_for_small_images_and_kept_when_saved():
    """auto: the small-image plan from 24 to 64 px, ImageNet's outside; the resolved plan is
    what a saved config holds (fine-tuning at 224 keeps a 32 px model's network), and
    a config saved before the plans existed rebuilds ImageNet's."""
    small = ModelConfig("b0", 10, image_size=32)
    assert small.stage_strides == "small"
    assert ModelConfig("b0", 10, image_size=64).stage_strides == "small"
    assert ModelConfig("b0", 10, image_size=65).stage_strides == "imagenet"
    assert ModelConfig("b0", 10, image_size=24).stage_strides == "small"
    assert ModelConfig("b0", 10, image_size=16).stage_strides == "imagenet"
    assert ModelConfig("b0", 10).stage_strides == "imagenet"  # the variant's 224 px
    assert small.replace(image_size=224).stage_strides == "small"
    assert ModelConfig.from_dict(small.to_dict()) == small
    old = {k: v for k, v in small.to_dict().items() if k != "stage_strides"}
    assert ModelConfig.from_dict(old).stage_strides == "imagenet"
    with pytest.raises(ValueError, match="stage_strides must be auto or one of"):
        ModelConfig("b0", 10, stage_strides="tiny")


def test_residual_blocks_are_where_stochastic_depth_acts():
    """At B0 depth 0.5 the 10 blocks have 3 residual ones; the layers built agree."""
    from nstudent.models import residual_blocks

    config = ModelConfig("b0", 10, image_size=32, depth_scale=0.5)
    assert residual_blocks(config) == ["block4b", "block5b", "block6b"]
    model = build_efficientnet(config)
    dropped = sorted(l.name.split("_")[0] for l in model.layers
                     if l.name.endswith("drop_path"))
    assert dropped == ["block4b", "block5b", "block6b"]


def test_plain_cnn_parameters_maps_and_blocks_by_hand():
    """--model=cnn at 10 classes on grey images: per conv 9 x in x out weights and 4
    batch-norm values per channel, then the classifier (128 x 10 + 10): 289,066. Its
    maps are halved by each block's pooling (32 -> 16, 8, 4), and its blocks are named
    as EfficientNet's, so freezing by block works."""
    from nstudent.models import describe_feature_maps

    convs = [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    by_hand = sum(9 * i * o + 4 * o for i, o in convs) + 128 * 10 + 10
    assert by_hand == 289_066
    config = ModelConfig("cnn", 10, channels=1, image_size=32)
    model = build_efficientnet(config)
    assert model.count_params() == by_hand
    assert describe_feature_maps(config) == "block1 16x16, block2 8x8, block3 4x4"
    probe = keras.Model(model.input, model.get_layer("block3b_pool").output)
    assert probe(np.zeros((1, 32, 32, 1), "float32")).shape == (1, 4, 4, 128)
    assert block_names(model) == ["block1a", "block1b", "block2a", "block2b", "block3a",
                                  "block3b"]
    assert build_efficientnet(config.replace(width_scale=0.5)).count_params() < by_hand


def test_plain_cnn_folds_for_pseudo_labeling():
    """The labeler's inference copy (batch norm folded into the convolutions) computes
    the plain CNN's inference-mode outputs too."""
    from nstudent.models import inference_network

    model = build_efficientnet(ModelConfig("cnn", 10, channels=1, image_size=16,
                                           width_scale=0.25))
    rng = np.random.default_rng(0)
    for layer in model.layers:  # statistics away from the initial 0 and 1
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
    x = rng.uniform(0, 255, (4, 16, 16, 1)).astype("float32")
    folded = inference_network(model)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)),
                               atol=2e-4, rtol=1e-3)
