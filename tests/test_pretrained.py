"""--init_weights: Keras applications' EfficientNet files load by layer name."""

import keras
import numpy as np
import pytest

from nstudent import models
from nstudent.models import ModelConfig, build_with_weights, load_pretrained
from nstudent.models.pretrained import WeightsError


@pytest.fixture(scope="module")
def b0_file(tmp_path_factory):
    """An untrained keras.applications B0 (with its 1000-class top) and its weights file."""
    path = str(tmp_path_factory.mktemp("weights") / "b0.weights.h5")
    app = keras.applications.EfficientNetB0(weights=None)
    app.save_weights(path)
    return app, path


def _features(model, name="avg_pool"):
    return keras.Model(model.input, model.get_layer(name).output)


def test_loaded_network_matches_the_keras_application(b0_file):
    app, path = b0_file
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    config, network = build_with_weights(ModelConfig(num_classes=1000), path)
    # the normalisation Keras' model applies (x/255, un-adapted mean 0 and variance 1)
    assert config.input_mean == (0.0,) * 3 and config.input_std == (255.0,) * 3
    np.testing.assert_allclose(keras.ops.softmax(network(images)), app(images), atol=1e-6)
    # another class count: everything up to the head, which is skipped
    config, network = build_with_weights(ModelConfig(num_classes=10), path)
    np.testing.assert_allclose(_features(network)(images), _features(app)(images), atol=1e-5)
    assert network.get_layer("logits").kernel.shape == (1280, 10)


def test_grey_model_sums_the_stem_over_colours(b0_file):
    app, path = b0_file
    grey = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 1)).astype("float32")
    config, network = build_with_weights(ModelConfig(num_classes=10, channels=1), path)
    stem = app.get_layer("stem_conv").kernel
    np.testing.assert_allclose(network.get_layer("stem_conv").kernel,
                               keras.ops.sum(stem, axis=2, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(_features(network)(grey),
                               _features(app)(np.repeat(grey, 3, axis=-1)), atol=1e-4)


def test_imagenet_statistics_get_keras_imagenet_normalisation(tmp_path):
    app = keras.applications.EfficientNetB0(weights=None, include_top=False)
    norm = [l for l in app.layers if isinstance(l, keras.layers.Normalization)][0]
    norm.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]),
                      np.array(0)])
    app.save_weights(str(tmp_path / "notop.weights.h5"))
    pretrained = load_pretrained(str(tmp_path / "notop.weights.h5"), "b0")
    # Keras' ImageNet files store the stddev as the variance: (x/255 - mean) / stddev
    np.testing.assert_allclose(pretrained.input_mean, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(pretrained.input_std, [58.395, 57.12, 57.375])


def test_files_that_do_not_fit_name_the_first_layer(b0_file, tmp_path):
    _, path = b0_file
    with pytest.raises(WeightsError, match="first layer that does not fit: stem_conv "
                       r"\(file \[\(3, 3, 3, 32\)\], model \[\(3, 3, 3, 16\)\]\)"):
        build_with_weights(ModelConfig(num_classes=10, width_scale=0.5), path)
    b1 = str(tmp_path / "b1.weights.h5")
    keras.applications.EfficientNetB1(weights=None).save_weights(b1)
    with pytest.raises(WeightsError, match="holds EfficientNet-B1 weights .* block1b_dwconv "
                       r"\(in the file, not in the model\)"):
        build_with_weights(ModelConfig(num_classes=10), b1)
    with pytest.raises(WeightsError, match="no file at"):
        load_pretrained(str(tmp_path / "none.h5"), "b0")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="not an EfficientNet-B0 weights file"):
        load_pretrained(str(tmp_path / "junk.h5"), "b0")
    assert models.build_with_weights(ModelConfig(num_classes=10))[0].input_mean == ()
