import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, write_image_folder
from nstudent import data
from nstudent.augment import make_randaugment
from nstudent.data import DataError, split_labeled
from nstudent.data.decode import unreadable_path
from nstudent.data.sources import DEBIAN_FASHION_MNIST


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_embedded_fashion_mnist_is_real():
    info, splits = data.load("fashion_mnist")
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, 28)
    assert len(splits["train"]) == 60000 and len(splits["test"]) == 10000
    assert np.bincount(splits["train"].labels).tolist() == [6000] * 10
    image, label = next(iter(splits["test"].dataset()))
    assert image.shape == (28, 28, 1) and image.dtype == tf.uint8
    assert int(label) == 9  # the first test image is an ankle boot
    assert int(tf.reduce_max(image)) > 200


def test_labeled_subset_is_balanced_disjoint_and_seeded():
    labels = np.repeat(np.arange(5), 30)
    labeled, unlabeled = split_labeled(labels, 5, 4, seed=0)
    assert np.bincount(labels[labeled]).tolist() == [4] * 5
    assert len(np.intersect1d(labeled, unlabeled)) == 0
    assert len(labeled) + len(unlabeled) == len(labels)
    assert np.array_equal(labeled, split_labeled(labels, 5, 4, seed=0)[0])
    assert not np.array_equal(labeled, split_labeled(labels, 5, 4, seed=1)[0])
    everything, none = split_labeled(labels, 5, 0, seed=0)
    assert len(everything) == 150 and len(none) == 0


def test_too_many_labels_per_class_names_the_class():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(DataError, match="class 1 has only 3"):
        split_labeled(labels, 2, 5, seed=0)


def test_image_folder_reads_classes_and_images(tmp_path):
    write_image_folder(tmp_path, "train")
    write_image_folder(tmp_path, "test", per_class=2)
    info, splits = data.load(f"folder:{tmp_path}")
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    assert splits["train"].labels.tolist() == [0, 0, 0, 1, 1, 1]
    images = [x for x, _ in splits["test"].dataset()]
    assert len(images) == 4 and images[0].shape == (12, 12, 3)


def test_corrupt_image_is_named_while_streaming_or_skipped_and_recorded(tmp_path,
                                                                        monkeypatch):
    write_image_folder(tmp_path, "train")
    write_image_folder(tmp_path, "test")
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    # a small folder: every header checked before any work, the file named
    with pytest.raises(DataError, match="broken.png is not a readable image .*1 such"):
        data.load(f"folder:{tmp_path}")
    # a large one (here: any) is checked while streaming
    from nstudent.data import sources

    monkeypatch.setattr(sources, "HEADER_CHECK_MAX_FILES", 0)
    info, splits = data.load(f"folder:{tmp_path}")  # indexed, nothing decoded yet
    assert len(splits["train"]) == 7
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(splits["train"].dataset())
    assert unreadable_path(error.value) == str(bad)
    info, splits = data.load(f"folder:{tmp_path}", skip_corrupt=True)
    assert len(list(splits["train"].dataset())) == 6
    assert splits["train"].skipped_files() == [str(bad)]
    # --verify_images: today's up-front check, named at once
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        data.load(f"folder:{tmp_path}", verify=True)
    info, splits = data.load(f"folder:{tmp_path}", verify=True, skip_corrupt=True)
    assert len(splits["train"]) == 6


def test_header_check_before_work_tells_whole_files_from_broken_ones(tmp_path):
    """The up-front check in plain Python against what each file really is, and the
    same verdict as the check tf.data runs while streaming."""
    from nstudent.data.decode import file_looks_complete, looks_complete

    cases = {}
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("BMP", "bmp")):
        whole = _photo("RGB", fmt=fmt)
        cases[f"whole.{ext}"] = (whole, True)
        cases[f"cut.{ext}"] = (whole[:len(whole) * 2 // 3], False)
    cases["empty.jpg"] = (b"", False)
    cases["page.jpg"] = (b"<html><body>404</body></html>", False)
    for name, (contents, whole) in cases.items():
        (tmp_path / name).write_bytes(contents)
        path = str(tmp_path / name)
        assert file_looks_complete(path) is whole, name
        assert bool(looks_complete(tf.io.read_file(path))) is whole, name


def _photo(mode, size=(30, 20), fmt="JPEG"):
    import io

    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
def test_every_colour_mode_is_converted_like_keras_folder_loader(tmp_path, channels):
    files = {"grey.jpg": _photo("L"), "cmyk.jpg": _photo("CMYK"),
             "rgba.png": _photo("RGBA", fmt="PNG"), "palette.gif": _photo("P", fmt="GIF"),
             "rgb.bmp": _photo("RGB", fmt="BMP"), "rgb.jpeg": _photo("RGB")}
    for name, contents in files.items():
        (tmp_path / name).write_bytes(contents)
    split = data.load_unlabeled(f"folder:{tmp_path}", channels)
    images = [x.numpy() for x, _ in split.dataset()]
    assert len(images) == len(files)
    assert all(x.shape == (20, 30, channels) and x.dtype == np.uint8 for x in images)
    if channels == 3:  # grey becomes grey RGB: equal channels
        grey = images[sorted(files).index("grey.jpg")]
        np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_selection_never_decodes_unselected_images(tmp_path, monkeypatch):
    """Choosing a subset decodes only it: the other files here are not images at all
    (a folder too large for the header check before work, as a huge one is)."""
    from nstudent.data import sources

    monkeypatch.setattr(sources, "HEADER_CHECK_MAX_FILES", 0)
    write_image_folder(tmp_path, "train", per_class=2)
    write_image_folder(tmp_path, "test", per_class=1)
    for name in ("cat", "dog"):
        (tmp_path / "train" / name / "9.png").write_bytes(b"garbage")  # indices 2 and 5
    info, splits = data.load(f"folder:{tmp_path}")
    picked = list(splits["train"].dataset([0, 4], with_index=True).as_numpy_iterator())
    assert [(int(y), int(i)) for _, y, i in picked] == [(0, 0), (1, 4)]
    # TFRecords: records whose bytes are not images are skipped over unparsed
    path = tmp_path / "rec"
    path.mkdir()
    _write_tfrecords(path / "train-0.tfrecord", [0, 1, 0], garbage_at=1)
    _write_tfrecords(path / "test-0.tfrecord", [0, 1])
    info, splits = data.load(f"tfrecord:{path}", channels=1)
    assert [int(y) for _, y in splits["train"].dataset([0, 2])] == [0, 0]


def test_unknown_extensions_are_counted_and_reported(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(_photo("RGB"))
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "b.webp").write_bytes(b"RIFF")
    (tmp_path / ".DS_Store").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        split = data.load_unlabeled(f"folder:{tmp_path}", 3)
    assert len(split) == 1 and not split.has_labels
    assert "2 files with other extensions" in caplog.text and ".webp" in caplog.text


def test_unlabeled_sources_bad_input(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_unlabeled(f"folder:{tmp_path}/none", 3)
    with pytest.raises(DataError, match="holds no images"):
        data.load_unlabeled(f"folder:{tmp_path}", 3)
    with pytest.raises(DataError, match="Unknown --unlabeled_dataset"):
        data.load_unlabeled("imagenet", 3)
    with pytest.raises(DataError, match="No TFRecord files"):
        data.load_unlabeled(f"tfrecord:{tmp_path}", 3)
    with tf.io.TFRecordWriter(str(tmp_path / "u.tfrecord")) as w:
        w.write(tf.train.Example(features=tf.train.Features(feature={
            "pixels": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
            .SerializeToString())
    with pytest.raises(DataError, match="no 'image' feature .*pixels"):
        data.load_unlabeled(f"tfrecord:{tmp_path}", 3)


def test_unlabeled_tfrecords_need_no_label(tmp_path):
    _write_tfrecords(tmp_path / "any-0.tfrecord", [0, 0, 0], channels=3, with_label=False)
    split = data.load_unlabeled(f"tfrecord:{tmp_path}", 1)
    images = [x for x, _ in split.dataset()]
    assert len(images) == 3 and images[0].shape == (8, 8, 1)  # colour converted to grey
    assert split.labels.tolist() == [data.UNLABELED] * 3


def test_missing_tfds_split_is_named():
    import types

    from nstudent.data.sources import _tfds_split

    builder = types.SimpleNamespace(name="toy", info=types.SimpleNamespace(
        splits={"train": None, "test": None}))
    with pytest.raises(DataError, match="no split 'unlabelled'; it has train, test"):
        _tfds_split(builder, "unlabelled", 3, None)


def test_missing_folder_split_and_unknown_class(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load(f"folder:{tmp_path}/nope")
    write_image_folder(tmp_path, "train")
    with pytest.raises(DataError, match="no 'test' subfolder"):
        data.load(f"folder:{tmp_path}")
    write_image_folder(tmp_path, "test", classes=("cat", "dog", "fox"))
    with pytest.raises(DataError, match="fox"):
        data.load(f"folder:{tmp_path}")


def _write_tfrecords(path, labels, channels=1, garbage_at=None, with_label=True):
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, (label, image) in enumerate(zip(labels, random_images(len(labels), 8,
                                                                     channels))):
            encoded = b"garbage" if i == garbage_at else tf.io.encode_png(image).numpy()
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[encoded]))}
            if with_label:
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(
                    value=[label]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                    .SerializeToString())


def test_tfrecords_and_label_outside_class_range(tmp_path):
    _write_tfrecords(tmp_path / "train-0.tfrecord", [0, 1, 2, 1])
    _write_tfrecords(tmp_path / "test-0.tfrecord", [2, 0])
    info, splits = data.load(f"tfrecord:{tmp_path}", channels=1)
    assert info.num_classes == 3
    assert [int(y) for _, y in splits["test"].dataset()] == [2, 0]
    (tmp_path / "dataset_info.json").write_text(json.dumps({"num_classes": 2}))
    with pytest.raises(DataError, match="label 2 of example 2 is outside the class range"):
        data.load(f"tfrecord:{tmp_path}", channels=1)


def test_unknown_datasets_fail_fast():
    with pytest.raises(DataError, match="Unknown dataset 'imagenet'"):
        data.load("imagenet")
    with pytest.raises(DataError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
        data.load("tfds:no_such_dataset_xyz")


def test_unprepared_tfds_dataset_does_not_download(tmp_path):
    with pytest.raises(DataError, match="not prepared"):
        data.load("tfds:mnist", tfds_data_dir=str(tmp_path))


def _examples(n=20, size=28, channels=1):
    images = random_images(n, size, channels)
    labels = np.arange(n) % 4
    return tf.data.Dataset.from_tensor_slices((images, labels))


def test_train_batches_are_noisy_float_one_hot():
    config = data.InputConfig(image_size=32, batch_size=8, randaugment_magnitude=9,
                              crop_padding=2)
    ds = data.train_dataset(_examples(), 4, config, seed=0)
    images, labels = next(iter(ds))
    assert images.shape == (8, 32, 32, 1) and images.dtype == tf.float32
    assert labels.shape == (8, 4) and np.allclose(labels.numpy().sum(-1), 1)
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255


def test_eval_batches_keep_every_example_in_order():
    config = data.InputConfig(image_size=28, batch_size=8)
    batches = list(data.eval_dataset(_examples(), 4, config))
    labels = np.concatenate([y.numpy().argmax(-1) for _, y in batches])
    assert labels.tolist() == (np.arange(20) % 4).tolist()
    first = batches[0][0].numpy()[0]
    np.testing.assert_array_equal(first, random_images(20, 28, 1)[0].astype("float32"))


@pytest.mark.parametrize("impl", ["keras_cv", "keras"])
@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_changes_images_and_keeps_shape(impl, channels):
    augment = make_randaugment(2, 9, impl, seed=0)
    image = tf.constant(random_images(1, 24, channels)[0], tf.float32)
    outs = [augment(image) for _ in range(4)]
    assert all(o.shape == image.shape for o in outs)
    assert any(not np.allclose(o, image) for o in outs)


def test_randaugment_magnitude_out_of_range():
    with pytest.raises(ValueError, match="magnitude must be in"):
        make_randaugment(2, 11)


def test_random_resized_crop_and_centre_crop_evaluation():
    from nstudent.data.pipeline import center_crop, random_resized_crop, resolve_cache

    wide = tf.constant(np.tile(np.arange(60, dtype=np.uint8)[None, :, None], (30, 1, 1)))
    config = data.InputConfig(image_size=16, batch_size=4, crop="random_resized",
                              crop_scale=(0.2, 0.3), crop_ratio=(0.9, 1.1))
    crops = [random_resized_crop(wide, config, seed=[s, 0]) for s in range(4)]
    assert all(c.shape == (16, 16, 1) for c in crops)
    # a fifth to a third of the area at aspect ~1: a 19-24 px window of the 30 x 60
    # image, so a crop spans about that many columns of the ramp, wherever it lies
    spans = [int(c.numpy().max()) - int(c.numpy().min()) for c in crops]
    assert all(17 <= s <= 24 for s in spans), spans
    # evaluation: shorter side 30 -> 16 / 0.5 = 32, then the central 16 x 16
    centre = center_crop(wide, 16, 0.5).numpy()[..., 0]
    assert centre.shape == (16, 16) and abs(centre.mean() - 29.5) < 1.0
    assert data.InputConfig.for_evaluation(16, 4, 0.875).eval_crop_fraction == 0.875
    assert data.InputConfig(16, 4).eval_crop_fraction == 0.0  # pad: a square resize
    # cache=auto: memory when the prepared set fits the budget, else none
    auto = data.InputConfig(image_size=32, batch_size=4)
    assert resolve_cache(auto, 4000, 1) == "memory"
    assert resolve_cache(auto, 10 ** 12, 3) == "none"
    assert resolve_cache(auto, None, 3) == "none"  # an unknown count is not cached
    assert resolve_cache(data.InputConfig(32, 4, cache="disk"), 10 ** 12, 3) == "disk"


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_train_batches_with_random_resized_crops_and_each_cache(cache):
    config = data.InputConfig(image_size=24, batch_size=8, crop="random_resized",
                              cache=cache)
    ds = data.train_dataset(_examples(size=40), 4, config, seed=0, num_examples=20)
    for images, labels in ds.take(3):
        assert images.shape == (8, 24, 24, 1) and labels.shape == (8, 4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop_scale=(0.0, 1.0)), "--crop_scale must satisfy"),
    (dict(crop_scale=(0.5, 1.2)), "--crop_scale must satisfy"),
    (dict(crop_ratio=(2.0, 1.0)), "--crop_ratio must satisfy"),
    (dict(center_crop=0.0), "--center_crop must be in"),
    (dict(crop="zoom"), "--crop must be one of"),
    (dict(cache="ram"), "--cache must be one of"),
])
def test_input_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.InputConfig(image_size=16, batch_size=4, **kwargs)


def test_a_split_missing_a_class_and_an_empty_class_are_named(tmp_path):
    """The message says which split lacks which class (not the opposite), and a class
    folder without images in train is refused by name rather than trained as a class
    the model never sees."""
    write_image_folder(tmp_path / "a", "train", classes=("cat", "dog", "fox"))
    write_image_folder(tmp_path / "a", "test", classes=("cat", "dog"))
    with pytest.raises(DataError, match=r"test lacks the class folder\(s\) \['fox'\] that "
                                        "'train' has"):
        data.load(f"folder:{tmp_path}/a")
    write_image_folder(tmp_path / "b", "train", classes=("cat", "dog"))
    write_image_folder(tmp_path / "b", "test", classes=("cat", "dog", "eel"))
    (tmp_path / "b" / "train" / "eel").mkdir()
    with pytest.raises(DataError, match=r"train: the class folder\(s\) \['eel'\] hold no "
                                        "images"):
        data.load(f"folder:{tmp_path}/b")


def test_drop_empty_classes_leaves_the_class_out_of_every_split(tmp_path):
    """--drop_empty_classes: a class folder without training images is left out of
    train and test (its test images too) and the rest renumbered in name order; the
    info records it. Without the flag the same folder is refused, naming the flag."""
    write_image_folder(tmp_path, "train", classes=("ant", "cat", "dog"), per_class=2)
    write_image_folder(tmp_path, "test", classes=("ant", "bee", "cat", "dog"), per_class=1)
    (tmp_path / "train" / "bee").mkdir()  # no training image
    with pytest.raises(DataError, match=r"\['bee'\] hold no images.*--drop_empty_classes"):
        data.load(f"folder:{tmp_path}")
    info, splits = data.load(f"folder:{tmp_path}", drop_empty_classes=True)
    assert info.class_names == ("ant", "cat", "dog") and info.num_classes == 3
    assert info.dropped_classes == ("bee",) and info.to_dict()["dropped_classes"] == ["bee"]
    # by hand: ant 0, cat 1, dog 2 in both splits; bee's test image is not read
    assert sorted(splits["train"].labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert sorted(splits["test"].labels.tolist()) == [0, 1, 2]
    assert not any("/bee/" in p for p in splits["test"].paths)
    with pytest.raises(DataError, match="--drop_empty_classes is for a single-label image "
                                        "folder"):
        data.load("fashion_mnist", drop_empty_classes=True)
