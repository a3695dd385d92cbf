import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images
from nstudent.evaluation import load_classifier
from nstudent.export import atomic_path, export_saved_model, save_keras


def test_atomic_path_keeps_old_target_when_writing_fails(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            os.makedirs(tmp)
            open(os.path.join(tmp, "half.txt"), "w").write("half")
            raise RuntimeError("killed mid-write")
    assert os.listdir(target) == ["old.txt"]
    assert os.listdir(tmp_path) == ["saved_model"]  # no temporary left behind
    with atomic_path(str(target)) as tmp:
        os.makedirs(tmp)
        open(os.path.join(tmp, "new.txt"), "w").write("new")
    assert os.listdir(target) == ["new.txt"]


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def exported(tmp_path, tiny_model):
    path = str(tmp_path / "saved_model")
    export_saved_model(tiny_model, path, image_size=16, channels=1)
    return path


def test_saved_model_matches_in_memory_model(exported, tiny_model):
    images = random_images(6, 16, 1)
    expected = _softmax(np.asarray(tiny_model(images.astype("float32"), training=False)))
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    out = serve(images=tf.constant(images))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-5)
    classes = out["classes"].numpy()
    np.testing.assert_array_equal(classes, out["probabilities"].numpy().argmax(-1))
    # An untrained model can nearly tie two classes; where it does not, argmax agrees.
    top2 = np.sort(expected, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    np.testing.assert_array_equal(classes[clear], expected.argmax(-1)[clear])
    assert out["classes"].dtype == tf.int64


def test_saved_model_resizes_raw_images_of_any_size(exported, tiny_model):
    images = random_images(3, 40, 1)
    resized = tf.cast(tf.round(tf.image.resize(images, (16, 16), antialias=True)), tf.uint8)
    expected = _softmax(np.asarray(tiny_model(tf.cast(resized, tf.float32), training=False)))
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    got = serve(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_saved_model_cli_lists_serving_default(exported):
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]  # saved_model_cli
    out = subprocess.run(cli + ["show", "--dir", exported, "--all"],
                         capture_output=True, text=True, check=True).stdout
    assert "signature_def['serving_default']" in out
    assert "DT_UINT8" in out and "probabilities" in out and "classes" in out


def test_keras_file_round_trip(tmp_path, tiny_model):
    path = str(tmp_path / "model.keras")
    save_keras(tiny_model, path)
    classifier = load_classifier(path)
    images = random_images(4, 16, 1).astype("float32")
    expected = _softmax(np.asarray(tiny_model(images, training=False)))
    np.testing.assert_allclose(classifier.probabilities(images), expected, atol=1e-5)


def test_missing_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="No model at"):
        load_classifier(str(tmp_path / "gen7"))
    with pytest.raises(FileNotFoundError, match="neither model.keras nor saved_model"):
        load_classifier(str(tmp_path))


def test_evaluating_unknown_classes_or_channels_is_refused(tmp_path, tiny_model):
    from nstudent.data import DatasetInfo
    from nstudent.evaluation.classify import Classifier

    info = {"dataset": {"class_names": ["a", "b", "c", "d"]}, "image_size": 16}
    classifier = Classifier(None, "m", "keras", info, channels=1)
    classifier.check_dataset(DatasetInfo("ok", 4, 1, ("a", "b", "c", "d")))
    with pytest.raises(ValueError, match="not trained on: zebra"):
        classifier.check_dataset(DatasetInfo("zoo", 4, 1, ("a", "b", "c", "zebra")))
    with pytest.raises(ValueError, match="takes 1-channel images but rgb has 3"):
        classifier.check_dataset(DatasetInfo("rgb", 4, 3, ("a", "b", "c", "d")))


def test_serving_centre_crops_as_evaluation_does(tmp_path, tiny_model):
    from nstudent.data import preprocess_eval

    path = str(tmp_path / "cropped")
    export_saved_model(tiny_model, path, image_size=16, channels=1, crop_fraction=0.5)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    image = random_images(1, 40, 1, seed=4)[0][:, :30]  # 40 x 30, not square
    expected = tiny_model(tf.cast(preprocess_eval(tf.constant(image), 16, 0.5),
                                  tf.float32)[None])
    got = serve(images=tf.constant(image[None]))["probabilities"].numpy()
    np.testing.assert_allclose(got, _softmax(np.asarray(expected)), atol=1e-5)


def test_evaluating_a_cropping_saved_model_does_not_crop_twice(tmp_path, tiny_model):
    """Evaluation prepares images (centre crop) before the classifier sees them; a
    SavedModel of a random_resized model must score them as its .keras file does,
    not crop them again in serving_default."""
    from nstudent import data, export, models

    config = models.ModelConfig(variant="b0", num_classes=4, channels=1, image_size=16,
                                width_scale=0.25, depth_scale=0.25)
    info = data.DatasetInfo("toy", 4, 1, ("a", "b", "c", "d"))
    head = tiny_model.get_layer("logits")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 1000.0, bias])  # a random tiny model is near-uniform
    run = str(tmp_path / "run")
    export.write_run(run, tiny_model, config, info, {}, crop_fraction=0.5)
    images = random_images(6, 16, 1, seed=5).astype("float32") // 4  # prepared: 16 px,
    images[:, :4], images[:, -4:], images[:, :, :4], images[:, :, -4:] = 255, 255, 255, 255
    # a bright frame around a dark centre: the centre crop keeps only the dark part
    from_keras = load_classifier(run, prefer="keras").probabilities(images)
    from_saved = load_classifier(run, prefer="saved_model").probabilities(images)
    np.testing.assert_allclose(from_saved, from_keras, atol=1e-5)
    np.testing.assert_allclose(from_keras, _softmax(np.asarray(tiny_model(images))),
                               atol=1e-5)
    serve = tf.saved_model.load(os.path.join(run, "saved_model")).signatures[
        "serving_default"]  # on raw images it crops, as it should: other numbers here
    cropped_again = serve(images=tf.constant(images.astype("uint8")))["probabilities"]
    assert np.abs(cropped_again.numpy() - from_keras).max() > 5e-5  # > the tolerance
