"""Pseudo-labels: filtering and balancing counts, temperature, a clean teacher, shards."""

import os

import numpy as np
import pytest

from conftest import random_images
from nstudent import data, export, models, pseudo_labels
from nstudent.evaluation import load_classifier
from nstudent.data.sources import in_memory_split
from nstudent.pseudo_labels import (
    LabelConfig, ShardError, filter_and_balance, load_pseudo_labels, soften)

# Hand-made teacher output: 8 images, 3 classes.
TABLE = np.array([
    [0.90, 0.05, 0.05],  # 0: class 0
    [0.80, 0.10, 0.10],  # 1: class 0
    [0.70, 0.20, 0.10],  # 2: class 0
    [0.60, 0.30, 0.10],  # 3: class 0
    [0.25, 0.40, 0.35],  # 4: class 1
    [0.10, 0.85, 0.05],  # 5: class 1
    [0.34, 0.33, 0.33],  # 6: class 0, below 0.35
    [0.20, 0.20, 0.60],  # 7: class 2
])


def test_filter_then_top_k_per_class_then_duplicate():
    sel = filter_and_balance(TABLE, min_confidence=0.35, per_class=2)
    assert sel.counts_predicted == [5, 2, 1]
    assert sel.counts_filtered == [4, 2, 1]  # image 6 is below the threshold
    assert sel.counts_balanced == [2, 2, 2]
    # class 0 keeps its two most confident; class 1 both, most confident first;
    # class 2's single image is written twice
    assert sel.rows.tolist() == [0, 1, 5, 4, 7, 7]


def test_default_k_is_mean_count_per_class_and_duplication_cycles():
    assert filter_and_balance(TABLE, min_confidence=0.3).per_class == 3  # 8 / 3 classes
    assert filter_and_balance(TABLE, min_confidence=0.35).per_class == 2  # 7 / 3
    sel = filter_and_balance(TABLE, min_confidence=0.35, per_class=5)
    assert sel.counts_balanced == [5, 5, 5]
    assert sel.rows[5:10].tolist() == [5, 4, 5, 4, 5]  # whole copies, best first
    assert sel.rows[10:].tolist() == [7] * 5


def test_threshold_that_filters_everything_is_an_error():
    with pytest.raises(ValueError, match="filters out every one of the 8 images"):
        filter_and_balance(TABLE, min_confidence=0.95)
    with pytest.raises(ValueError, match="non-empty"):
        filter_and_balance(np.zeros((0, 3)))


def test_temperature_softens_and_sharpens_without_moving_the_argmax():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    plain, warm, cold = soften(logits), soften(logits, 2.0), soften(logits, 0.25)
    np.testing.assert_allclose(plain.sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(warm, soften(logits / 2.0), rtol=1e-6)
    assert (warm.max(-1) < plain.max(-1)).all() and (cold.max(-1) > plain.max(-1)).all()
    assert (warm.argmax(-1) == plain.argmax(-1)).all()
    assert (cold.argmax(-1) == plain.argmax(-1)).all()
    np.testing.assert_array_equal(soften(logits, hard=True), np.eye(3)[[0, 1]])
    with pytest.raises(ValueError, match="temperature must be positive"):
        soften(logits, 0.0)


def _noisy_teacher_run(tmp_path, tiny_config, num_classes=4):
    """A run folder whose model has heavy dropout and stochastic depth."""
    config = tiny_config.replace(num_classes=num_classes, dropout=0.5, stochastic_depth=0.5)
    model = models.build_efficientnet(config)
    info = data.DatasetInfo("toy", num_classes, 1, tuple(f"c{i}" for i in range(num_classes)))
    out = str(tmp_path / "teacher")
    export.write_run(out, model, config, info, {"parameters": model.count_params()})
    return out, model, info


def _toy_split(n=40, num_classes=4, size=16):
    images = random_images(n, size, 1, seed=3)
    labels = np.arange(n) % num_classes
    return in_memory_split("train", images, labels)


def _unlabeled(info, split):
    """StageData whose unlabeled images are all of `split` (a separate source)."""
    return data.StageData(info, split, unlabeled_source=split)


@pytest.mark.parametrize("prefer", ["saved_model", "keras"])
def test_teacher_runs_clean(tmp_path, tiny_config, prefer):
    run, model, info = _noisy_teacher_run(tmp_path, tiny_config)
    images = random_images(8, 16, 1).astype(np.float32)
    clean = np.asarray(model(images, training=False))
    # the network is noisy in training mode, so a clean run is not a given
    noisy = [np.asarray(model(images, training=True)) for _ in range(2)]
    assert not np.allclose(noisy[0], noisy[1], atol=1e-4)
    teacher = load_classifier(run, prefer=prefer)
    np.testing.assert_array_equal(teacher.logits(images), teacher.logits(images))
    np.testing.assert_allclose(teacher.logits(images), clean, atol=1e-5)
    # whole shards too: labeling the same images twice gives the same labels
    split = _toy_split()
    config = LabelConfig(min_confidence=0.0)
    for out in ("a", "b"):
        pseudo_labels.label_shards(teacher, _unlabeled(info, split), [0], 1, config,
                                   str(tmp_path / out), {"run": out})
    a, b = (load_pseudo_labels(str(tmp_path / o)) for o in "ab")
    labels_a = np.stack([y for _, y in a.dataset().as_numpy_iterator()])
    labels_b = np.stack([y for _, y in b.dataset().as_numpy_iterator()])
    np.testing.assert_array_equal(labels_a, labels_b)


def test_shards_round_trip_skip_and_name_missing_or_partial_ones(tmp_path, tiny_config):
    run, _, info = _noisy_teacher_run(tmp_path, tiny_config)
    teacher = load_classifier(run)
    split = _toy_split()
    out = str(tmp_path / "pl")
    config = LabelConfig(min_confidence=0.0, per_class=8)
    stats = pseudo_labels.label_shards(teacher, _unlabeled(info, split), [0, 1, 2], 3,
                                       config, out, {"run": 1})
    assert [s["images_in"] for s in stats] == [14, 13, 13]
    for s in stats:  # K=8 for the whole set: 3 per class and shard (rounded up)
        assert all(c in (0, 3) for c in s["counts_balanced"])
        assert s["records"] == sum(s["counts_balanced"])
    pl = load_pseudo_labels(out)
    assert pl.records == sum(s["records"] for s in stats)
    examples = list(pl.dataset().as_numpy_iterator())
    assert len(examples) == pl.records
    image, label = examples[0]
    assert image.shape == (16, 16, 1) and image.dtype == np.uint8
    assert label.shape == (4,) and abs(label.sum() - 1) < 1e-5
    assert not [f for f in os.listdir(out) if ".tmp-" in f]

    # a complete shard is skipped on a re-run, not rewritten
    record = os.path.join(out, "pseudo-00001-of-00003.tfrecord")
    before = os.stat(record).st_mtime_ns
    pseudo_labels.label_shards(teacher, _unlabeled(info, split), [1], 3, config, out,
                               {"run": 1})
    assert os.stat(record).st_mtime_ns == before
    with pytest.raises(ValueError, match="made with other settings"):
        pseudo_labels.label_shards(teacher, _unlabeled(info, split), [1], 3, config,
                                   out, {"run": 2})

    # partially written: the TFRecord is cut short, or its stats never came
    with open(record, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ShardError, match="Shard 1 of 3.*100 bytes"):
        load_pseudo_labels(out)
    os.remove(os.path.join(out, "pseudo-00001-of-00003.json"))
    with pytest.raises(ShardError, match="Shard 1 of 3 .* partially written.*--shard_index=1"):
        load_pseudo_labels(out)
    os.remove(record)
    with pytest.raises(ShardError, match="Shard 1 of 3 .* missing"):
        load_pseudo_labels(out)
    with pytest.raises(ShardError, match="no pseudo-label shards"):
        load_pseudo_labels(str(tmp_path))


def test_bad_teacher_or_unlabeled_set(tmp_path, tiny_config):
    run, _, info = _noisy_teacher_run(tmp_path, tiny_config, num_classes=5)
    teacher = load_classifier(run)
    split = _toy_split()
    other = data.DatasetInfo("toy", 4, 1, ("c0", "c1", "c2", "c3"))
    with pytest.raises(ValueError, match="predicts 5 classes but toy has 4"):
        pseudo_labels.label_shards(teacher, _unlabeled(other, split), [0], 1,
                                   LabelConfig(), str(tmp_path / "x"), {})
    with pytest.raises(ValueError, match="unlabeled set is empty"):
        pseudo_labels.label_shards(teacher, data.StageData(info, split, labels_per_class=0),
                                   [0], 1, LabelConfig(), str(tmp_path / "x"), {})
    assert not os.path.exists(tmp_path / "x") or not os.listdir(tmp_path / "x")
