import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import random_images, write_image_folder
from nstudent import data
from nstudent.augment import make_randaugment
from nstudent.data import DataError, split_labeled
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


def test_corrupt_image_is_named_or_skipped_with_count(tmp_path, caplog):
    write_image_folder(tmp_path, "train")
    write_image_folder(tmp_path, "test")
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        data.load(f"folder:{tmp_path}")
    info, splits = data.load(f"folder:{tmp_path}", skip_corrupt=True)
    assert len(splits["train"]) == 6
    assert "Skipping 1 corrupt images" in caplog.text


def test_wrong_channel_count_is_named(tmp_path):
    write_image_folder(tmp_path, "train")
    write_image_folder(tmp_path, "test")
    (tmp_path / "train" / "cat" / "grey.png").write_bytes(
        tf.io.encode_png(random_images(1, 12, 1)[0]).numpy())
    with pytest.raises(DataError, match="grey.png has 1 channels, expected 3"):
        data.load(f"folder:{tmp_path}")


def test_missing_folder_split_and_unknown_class(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load(f"folder:{tmp_path}/nope")
    write_image_folder(tmp_path, "train")
    with pytest.raises(DataError, match="no 'test' subfolder"):
        data.load(f"folder:{tmp_path}")
    write_image_folder(tmp_path, "test", classes=("cat", "dog", "fox"))
    with pytest.raises(DataError, match="fox"):
        data.load(f"folder:{tmp_path}")


def _write_tfrecords(path, labels, channels=1):
    with tf.io.TFRecordWriter(str(path)) as w:
        for label, image in zip(labels, random_images(len(labels), 8, channels)):
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_png(image).numpy()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}))
            w.write(ex.SerializeToString())


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
