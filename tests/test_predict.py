"""tools/predict.py: a folder of JPEGs of mixed sizes and colour modes in, a CSV of
what serving_default says about each file out; bad input ends in one line."""

import csv
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, write_photo_folder
from nstudent import data, export, models
from test_tools import run_tool

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def model_and_photos(tmp_path_factory):
    """A 3-channel model exported as training exports it (centre crop 0.875, as a
    random_resized run), and 9 unlabeled JPEGs of mixed sizes, every fourth grey."""
    root = tmp_path_factory.mktemp("predict")
    config = models.ModelConfig(**dict(TINY, num_classes=3, channels=3))
    network = models.build_efficientnet(config)
    # an untrained head gives near-uniform probabilities whatever the input; a scaled
    # one makes them depend on the image (and its crop) enough to be checked
    kernel, bias = network.get_layer("logits").get_weights()
    network.get_layer("logits").set_weights([kernel * 1e5, bias])
    info = data.DatasetInfo("photos", 3, 3, CLASSES)
    export.write_run(str(root / "run"), network, config, info,
                     {"parameters": network.count_params()}, 0.875)
    paths = write_photo_folder(root / "photos", CLASSES, per_class=1, unlabeled=9)
    return root, paths


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predictions_are_what_serving_default_serves(model_and_photos, tmp_path):
    root, paths = model_and_photos
    (tmp_path / "in").mkdir()
    for p in paths:
        os.link(p, tmp_path / "in" / os.path.basename(p))
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = str(tmp_path / "predictions.csv")
    result = run_tool("predict.py", f"--model={root / 'run'}",
                      f"--input=folder:{tmp_path / 'in'}", f"--output={out}", "--top_k=2",
                      "--batch_size=4", "--skip_corrupt_images")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Classified 9 images" in result.stderr and "1 unreadable skipped" in result.stderr
    rows = _read(out)
    assert list(rows[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2"]
    serve = tf.saved_model.load(str(root / "run" / "saved_model")).signatures["serving_default"]
    assert sorted(r["image"] for r in rows) == sorted(
        str(tmp_path / "in" / os.path.basename(p)) for p in paths)
    for r in rows:  # each file alone through serving_default, decoded to RGB
        image = tf.io.decode_image(open(r["image"], "rb").read(), channels=3,
                                   expand_animations=False)
        served = serve(images=image[None])["probabilities"].numpy()[0]
        named = [CLASSES.index(r["class_1"]), CLASSES.index(r["class_2"])]
        written = [float(r["probability_1"]), float(r["probability_2"])]
        # each named class's probability as served (the CSV keeps 6 decimals), in order,
        # and no other class above them; near-equal probabilities may swap places
        # between a batch and a single image
        np.testing.assert_allclose(written, served[named], atol=2e-6)
        assert written[0] >= written[1]
        others = np.delete(served, named)
        assert not others.size or others.max() <= served[named].min() + 2e-6


def test_bad_input_is_one_line_and_writes_nothing(model_and_photos, tmp_path):
    root, paths = model_and_photos
    out = tmp_path / "p.csv"
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG nothing")
    for args, message in (
            ([f"--input=folder:{tmp_path / 'empty'}"], "holds no images"),
            ([f"--input=folder:{tmp_path / 'bad'}"], "broken.png is not a readable image"),
            ([f"--input=folder:{os.path.dirname(paths[0])}", "--channels=1"],
             "takes 3-channel images, not --channels=1"),
            ([f"--input=folder:{os.path.dirname(paths[0])}", "--top_k=0"],
             "--top_k must be at least 1"),
            (["--input=photos:x"], "Unknown --input 'photos:x'")):
        result = run_tool("predict.py", f"--model={root / 'run'}", f"--output={out}", *args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, args
        assert sorted(os.listdir(tmp_path)) == ["bad", "empty"]  # no CSV, no temp file
