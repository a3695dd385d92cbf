"""A user's own data: a labeled folder of JPEGs, a separate flat unlabeled folder."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import write_photo_folder
from test_tools import run_tool

FLAGS = ["--channels=3", "--labels_per_class=0", "--model=b0", "--width_scale=0.25",
         "--depth_scale=0.25", "--image_size=16", "--batch_size=8", "--epochs=2",
         "--randaugment_magnitude=5", "--min_confidence=0", "--crop=random_resized"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    paths = write_photo_folder(root, per_class=12, unlabeled=60)
    corrupt = root / "unlabeled" / "u0007.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # a truncated copy
    (root / "unlabeled" / "readme.txt").write_text("not an image")
    return root, paths, str(corrupt)


def _records(folder):
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "index": tf.io.FixedLenFeature([], tf.int64)}
    files = sorted(str(p) for p in folder.glob("*.tfrecord"))
    return [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files)]


def test_pipeline_with_a_separate_unlabeled_folder(photos, tmp_path):
    root, paths, corrupt = photos
    out = tmp_path / "run"
    data_flags = [f"--dataset=folder:{root}/labeled",
                  f"--unlabeled_dataset=folder:{root}/unlabeled"]
    result = run_tool("pipeline.py", *FLAGS, *data_flags, "--skip_corrupt_images",
                      "--generations=1", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipped 1 unreadable images (first: " + corrupt in result.stderr
    assert "1 files with other extensions" in result.stderr

    stats = json.load(open(out / "pseudo_labels_for_gen1" / "stats.json"))
    assert stats["images_in"] == 60 and stats["images_read"] == 59
    assert stats["unreadable_skipped"] == 1 and stats["unreadable_first"] == [corrupt]
    assert stats["settings"]["unlabeled_dataset"] == f"folder:{root}/unlabeled"
    assert "agreement_with_dataset_labels" not in stats  # a separate source has no labels
    # every record holds its source file's own bytes (no re-encode), never the corrupt one
    records = _records(out / "pseudo_labels_for_gen1")
    assert len(records) == stats["distinct_images"] > 0
    for record in records:
        path = paths[int(record["index"])]
        assert path != corrupt
        assert record["image"].numpy() == open(path, "rb").read()

    teacher = json.load(open(out / "gen0" / "metrics.json"))
    student = json.load(open(out / "gen1" / "metrics.json"))
    assert teacher["labeled_examples"] == 36  # labels_per_class=0: every labeled image
    for metrics in (teacher, student):  # the labeled folder is all readable
        assert metrics["data"]["skipped_unreadable_images"] == 0
    assert student["bn_recalibration_batches"] > 0
    info = json.load(open(out / "gen1" / "model_info.json"))
    assert info["eval_crop_fraction"] == 0.875

    # without --skip_corrupt_images the stage stops and names the file, no traceback
    result = run_tool("pseudo_label.py", *FLAGS, *data_flags, f"--teacher={out}/gen0",
                      f"--out={tmp_path}/pl")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {corrupt} is not a readable image" in result.stderr
    assert "Traceback" not in result.stderr
    written = [p.name for p in (tmp_path / "pl").rglob("*") if p.is_file()]
    assert written in ([], ["settings.json"])  # who labels, and no result


@pytest.mark.parametrize("flag, message", [
    ("--unlabeled_dataset=folder:/no/such/folder", "Unlabeled image folder '/no/such/folder' "
     "does not exist"),
    ("--unlabeled_dataset=tfrecord:/no/such", "No TFRecord files"),
    ("--init_weights=/no/such.weights.h5", "--init_weights: no file at '/no/such.weights.h5'"),
    ("--crop_scale=0,1", "--crop_scale must satisfy 0 < min <= max <= 1"),
    ("--crop_scale=0.5,1.5", "--crop_scale must satisfy"),
])
def test_bad_own_data_input_gives_one_clear_error(photos, tmp_path, flag, message):
    root, _, _ = photos
    result = run_tool("pipeline.py", *FLAGS, f"--dataset=folder:{root}/labeled", flag,
                      f"--out={tmp_path}/x")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()


def test_an_empty_class_folder_is_dropped_on_request_and_its_teacher_passes_it_on(tmp_path):
    """--drop_empty_classes: the class without training photos leaves every split and
    is recorded in metrics.json and model_info.json; pseudo-labeling with that teacher
    takes the setting from it (so it opens the same classes) without the flag."""
    root = tmp_path / "photos"
    write_photo_folder(root, classes=("a", "b", "c"), per_class=6, unlabeled=4)
    for photo in (root / "labeled" / "train" / "b").iterdir():
        photo.unlink()
    labeled = f"--dataset=folder:{root / 'labeled'}"
    teacher = tmp_path / "teacher"
    flags = [*FLAGS[:-3], "--epochs=1", "--batch_size=4"]
    result = run_tool("train.py", labeled, *flags, f"--out={teacher}")
    assert result.returncode == 2 and "['b'] hold no images" in result.stderr
    result = run_tool("train.py", labeled, *flags, "--drop_empty_classes", f"--out={teacher}")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((teacher / "metrics.json").read_text())
    info = json.loads((teacher / "model_info.json").read_text())
    assert metrics["data"]["dropped_empty_classes"] == ["b"]
    assert info["dataset"]["class_names"] == ["a", "c"] and info["dataset"]["num_classes"] == 2
    assert info["held_out"]["drop_empty_classes"] is True
    result = run_tool("pseudo_label.py", labeled, *flags, f"--teacher={teacher}",
                      f"--unlabeled_dataset=folder:{root / 'unlabeled'}",
                      f"--out={tmp_path / 'labels'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--drop_empty_classes=True." in result.stderr
    stats = json.loads((tmp_path / "labels" / "stats.json").read_text())
    assert stats["settings"]["drop_empty_classes"] is True
