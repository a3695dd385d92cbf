"""Pseudo-labels: counts by hand, one global balance however sharded, a clean teacher,
labels and images checked per record, shuffled output with copies, bad input."""

import logging
import os

import keras
import numpy as np
import pytest

from conftest import random_images
from nstudent import data, export, models, pseudo_labels
from nstudent.data.decode import decode
from nstudent.data.pipeline import preprocess_eval
from nstudent.data.sources import in_memory_split
from nstudent.evaluation import load_classifier
from nstudent.pseudo_labels import (
    LabelConfig, LabelShard, ShardError, balance, filter_and_balance, load_pseudo_labels,
    read_records, soften)
from nstudent.training.batchnorm import recalibrate_batch_norm


def copies_per_index(records):
    """{source index: copies}: the multiset of source images a set holds."""
    return {int(r["index"]): int(r["copies"]) for r in records}


def class_runs(classes):
    """Lengths of the runs of equal consecutive values (how sorted an order is)."""
    classes = np.asarray(classes)
    if not len(classes):
        return np.zeros(0, np.int64)
    edges = np.flatnonzero(np.diff(classes)) + 1
    return np.diff(np.concatenate([[0], edges, [len(classes)]]))


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


def test_empty_class_stays_empty_and_counts_in_k():
    table = np.array([[0.9, 0.1, 0.0]] * 5 + [[0.2, 0.8, 0.0]])  # class 2: never predicted
    sel = filter_and_balance(table, min_confidence=0.0)
    assert sel.per_class == 2  # 6 candidates / 3 classes, the empty one included
    assert sel.counts_balanced == [2, 2, 0]


def test_threshold_that_filters_everything_is_an_error():
    with pytest.raises(ValueError, match="filters out every one of the 8 images"):
        filter_and_balance(TABLE, min_confidence=0.95)
    with pytest.raises(ValueError, match="non-empty"):
        filter_and_balance(np.zeros((0, 3)))


def _brute_copies(predicted, confidence, index, min_confidence, k, num_classes):
    """The definition, by sorting: K best per class, or whole copies then the best."""
    copies = np.zeros(len(index), np.int64)
    for c in range(num_classes):
        members = np.flatnonzero((predicted == c) & (confidence >= min_confidence))
        members = members[np.lexsort((index[members], -confidence[members]))]
        n = len(members)
        if n >= k:
            copies[members[:k]] = 1
        elif n:
            copies[members] = k // n
            copies[members[:k % n]] += 1
    return copies


@pytest.mark.parametrize("ties", [False, True])
def test_streamed_balance_matches_sorting_however_chunked(ties):
    rng = np.random.default_rng(0)
    n, classes = 3000, 6
    predicted = rng.choice(classes, n, p=[0.4, 0.3, 0.15, 0.1, 0.05, 0.0])
    confidence = rng.uniform(0.1, 1.0, n).astype(np.float32)
    if ties:  # many equal confidences: the source index decides, deep radix passes
        confidence = np.round(confidence * 8).astype(np.float32) / 8
    index = rng.permutation(10 ** 6)[:n]  # sparse source indices
    chunk = {"predicted": predicted, "confidence": confidence, "index": index}
    for k in (0, 40, 700):
        whole = balance(lambda: [chunk], classes, 0.3, k)
        expected = _brute_copies(predicted, confidence, index, 0.3,
                                 whole.per_class, classes)
        for parts in (1, 7, 64):  # any chunking, any order of the chunks
            cuts = np.array_split(rng.permutation(n), parts)
            pieces = [{key: v[c] for key, v in chunk.items()} for c in cuts]
            streamed = balance(lambda: iter(pieces), classes, 0.3, k)
            got = streamed.copies(predicted, confidence, index, 0.3)
            np.testing.assert_array_equal(got, expected)
        assert np.bincount(predicted[expected > 0], weights=expected[expected > 0],
                           minlength=classes)[:5].tolist() == [whole.per_class] * 5


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


# --- A real teacher over real splits ---

def _randomise_batch_norm(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 2.0, v.shape)])


def _teacher(tmp_path, tiny_config, images, num_classes=4, crop_fraction=0.0):
    """A noisy (dropout, stochastic depth) untrained teacher whose predictions spread
    over every class on `images`: the logits layer is centred on their features."""
    config = tiny_config.replace(num_classes=num_classes, dropout=0.5, stochastic_depth=0.5)
    model = models.build_efficientnet(config)
    _randomise_batch_norm(model)  # random scales and shifts; the statistics are real:
    x = np.asarray(preprocess_eval(images, config.resolved_image_size, crop_fraction),
                   np.float32)
    recalibrate_batch_norm(model, np.array_split(x, 4))
    features = np.asarray(keras.Model(model.input, model.get_layer("avg_pool").output)(
        x, training=False), np.float64)
    w = np.random.default_rng(2).normal(size=(features.shape[1], num_classes))
    z = (features - features.mean(0)) @ w
    w *= 2.0 / z.std(0)  # logits of about +-2: confidences from ~0.3 to ~1
    model.get_layer("logits").set_weights([w.astype(np.float32),
                                           (-features.mean(0) @ w).astype(np.float32)])
    info = data.DatasetInfo("toy", num_classes, 1, tuple(f"c{i}" for i in range(num_classes)))
    out = str(tmp_path / "teacher")
    export.write_run(out, model, config, info, {"parameters": model.count_params()},
                     crop_fraction=crop_fraction)
    return out, model, info


def _label(teacher, info, split, out, config=LabelConfig(min_confidence=0.0), shards=None,
           num_shards=1, **kw):
    stage_data = data.StageData(info, split, unlabeled_source=split, dataset="toy")
    return pseudo_labels.pseudo_label(teacher, stage_data, config, str(out), shards,
                                      num_shards, **kw)


@pytest.fixture
def sorted_source(tmp_path, tiny_config):
    """2,400 images and a teacher; the source is sorted by the teacher's class, as a
    class-per-folder collection is, so source order would be a sorted output."""
    images = random_images(2400, 16, 1, seed=3)
    teacher, model, info = _teacher(tmp_path, tiny_config, images)
    predicted = np.asarray(model(images.astype(np.float32), training=False)).argmax(-1)
    images = images[np.argsort(predicted, kind="stable")]
    return teacher, model, info, in_memory_split("train", images, np.arange(2400) % 4), images


def test_inference_network_equals_the_model_in_inference_mode(tiny_config):
    model = models.build_efficientnet(tiny_config.replace(dropout=0.5, stochastic_depth=0.5))
    _randomise_batch_norm(model)
    folded = models.inference_network(model)
    assert not [la for la in folded.layers
                if isinstance(la, (keras.layers.BatchNormalization, keras.layers.Dropout))]
    x = random_images(16, 16, 1).astype(np.float32)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x, training=False)),
                               atol=2e-5, rtol=1e-4)
    noisy = [np.asarray(model(x, training=True)) for _ in range(2)]
    assert not np.allclose(noisy[0], noisy[1], atol=1e-4)  # so clean is not a given


def test_every_record_is_its_source_image_with_the_teachers_label(sorted_source, tmp_path):
    teacher, model, info, split, images = sorted_source
    for name, config in (("t2", LabelConfig(min_confidence=0.0, temperature=2.0)),
                         ("hard", LabelConfig(min_confidence=0.5, hard=True))):
        stats = _label(teacher, info, split, tmp_path / name, config)
        records = read_records(str(tmp_path / name))
        assert len(records) == stats["distinct_images"] > 0
        index = np.array([r["index"] for r in records])
        stored = np.stack([np.asarray(decode(r["image"], 1)) for r in records])
        np.testing.assert_array_equal(stored, images[index])  # image at its stored index
        logits = np.asarray(model(images[index].astype(np.float32), training=False))
        expected = soften(logits, config.temperature, config.hard)
        labels = np.stack([r["label"] for r in records])
        np.testing.assert_allclose(labels, expected, atol=2e-5)
        confidence = soften(logits, config.temperature).max(-1)
        np.testing.assert_allclose([r["confidence"] for r in records], confidence, atol=2e-5)
        assert min(r["confidence"] for r in records) >= config.min_confidence
        assert stats["settings"]["teacher"] == os.path.abspath(teacher)
    assert (np.unique(labels) == [0, 1]).all()  # hard labels are one-hot


def test_one_shard_and_four_select_the_same_and_order_is_shuffled(sorted_source, tmp_path):
    teacher, _, info, split, _ = sorted_source
    one = _label(teacher, info, split, tmp_path / "one")
    for i in (2, 0, 3, 1):  # as four machines would, in any order
        four = _label(teacher, info, split, tmp_path / "four", shards=[i], num_shards=4)
    a, b = read_records(str(tmp_path / "one")), read_records(str(tmp_path / "four"))
    assert copies_per_index(a) == copies_per_index(b)
    labels_a = {int(r["index"]): r["label"] for r in a}
    for r in b:
        np.testing.assert_allclose(r["label"], labels_a[int(r["index"])], atol=1e-6)
    assert one["per_class"] == four["per_class"] == 600  # 2,400 / 4 classes
    assert [c["copies"] for c in one["classes"]] == [600] * 4
    assert [c["selected"] for c in one["classes"]] == [c["selected"] for c in four["classes"]]
    # the source is sorted by class; the written order is not
    classes = [int(r["class"]) for r in a[:1000]]
    assert len(a) >= 1000 and class_runs(classes).max() <= 15
    assert class_runs([int(r["class"]) for r in b[:1000]]).max() <= 15
    # the 4 shard files are interleaved when read: consecutive records alternate shards
    first = [int(r["index"]) % 4 for r in read_records(str(tmp_path / "four"))[:8]]
    assert len(set(first)) > 1


def test_duplicates_are_stored_once_and_expanded_when_read(sorted_source, tmp_path):
    teacher, _, info, split, _ = sorted_source
    stats = _label(teacher, info, split, tmp_path / "pl",
                   LabelConfig(min_confidence=0.0, per_class=900))
    records = read_records(str(tmp_path / "pl"))
    copies = np.array([r["copies"] for r in records])
    assert copies.max() >= 2 and len(records) == stats["distinct_images"]
    assert stats["records"] == copies.sum() == 900 * 4
    assert len(set(int(r["index"]) for r in records)) == len(records)  # once each
    pl = load_pseudo_labels(str(tmp_path / "pl"))
    seen = {}
    for image, label in pl.dataset().as_numpy_iterator():
        key = image.tobytes() + label.tobytes()
        seen[key] = seen.get(key, 0) + 1
    by_record = {np.asarray(decode(r["image"], 1)).tobytes() + r["label"].tobytes():
                 int(r["copies"]) for r in records}
    assert seen == by_record and pl.records == 3600


def test_labeling_resumes_at_the_first_missing_chunk(sorted_source, tmp_path, caplog):
    teacher, _, info, split, _ = sorted_source
    config = LabelConfig(min_confidence=0.0, chunk_size=500)
    _label(teacher, info, split, tmp_path / "a", config, phase="label")
    shard = LabelShard(str(tmp_path / "a"), 0, 1)
    assert shard.finished_chunks() == [0, 1, 2, 3, 4]
    before = {j: os.stat(shard.chunk_path(j)).st_mtime_ns for j in range(5)}
    kept = shard.read_chunk(3, ("index", "logits"))
    os.remove(shard.chunk_path(3))
    os.remove(shard.done_path)  # as after a kill during chunk 3
    with caplog.at_level(logging.INFO, logger="absl"):
        _label(teacher, info, split, tmp_path / "a", config, phase="label")
    assert "resuming at chunk 4 of 5" in caplog.text
    assert {j: os.stat(shard.chunk_path(j)).st_mtime_ns for j in (0, 1, 2, 4)} == {
        j: before[j] for j in (0, 1, 2, 4)}
    again = shard.read_chunk(3, ("index", "logits"))
    np.testing.assert_array_equal(again["index"], kept["index"])
    np.testing.assert_allclose(again["logits"], kept["logits"], atol=1e-6)
    with pytest.raises(ShardError, match="labeled with other settings.*temperature"):
        _label(teacher, info, split, tmp_path / "a",
               LabelConfig(min_confidence=0.0, chunk_size=500, temperature=3.0),
               phase="label")


def test_selection_names_missing_partial_and_foreign_shards(sorted_source, tmp_path,
                                                            caplog):
    teacher, _, info, split, _ = sorted_source
    out = tmp_path / "pl"
    config = LabelConfig(min_confidence=0.0, chunk_size=200)
    _label(teacher, info, split, out, config, shards=[0], num_shards=3)
    # shard 1 killed after two chunks: chunk files, no completion marker
    _label(teacher, info, split, out, config, shards=[1], num_shards=3, phase="label")
    shard1 = LabelShard(str(out), 1, 3)
    for j in range(2, len(shard1.finished_chunks())):
        os.remove(shard1.chunk_path(j))
    os.remove(shard1.done_path)
    with pytest.raises(ShardError, match=r"2 of 3 are not: shard 1 \(2 chunks so far\), "
                                         r"shard 2 \(not started\).*--shard_index=1"):
        _label(teacher, info, split, out, config, num_shards=3, phase="select")
    assert not os.path.exists(out / "stats.json") and not list(out.glob("*.tfrecord"))
    # labeling the rest makes selection possible
    for i in (1, 2):
        _label(teacher, info, split, out, config, shards=[i], num_shards=3)
    assert load_pseudo_labels(str(out)).records == 2400
    # shards from another teacher or settings cannot be selected together
    with pytest.raises(ShardError, match="labeled with other settings"):
        _label(teacher, info, split, out, LabelConfig(min_confidence=0.0, chunk_size=200,
                                                      temperature=2.0), num_shards=3)
    # a class that the filter empties is named (filtering everything: the hand table)
    with caplog.at_level(logging.WARNING):
        stats = _label(teacher, info, split, out,
                       LabelConfig(min_confidence=0.9, chunk_size=200), num_shards=3,
                       phase="select", overwrite=True)
    empty = [c["class"] for c in stats["classes"] if c["above_threshold"] == 0]
    if empty:
        assert f"class(es) {', '.join(empty)}" in caplog.text



def test_stats_count_per_class_and_report_accuracy_where_labels_exist(sorted_source,
                                                                      tmp_path):
    teacher, model, info, split, images = sorted_source
    stats = _label(teacher, info, split, tmp_path / "pl", LabelConfig(min_confidence=0.5))
    logits = np.asarray(model(images.astype(np.float32), training=False))
    probs = soften(logits)
    predicted, confident = probs.argmax(-1), probs.max(-1) >= 0.5
    k = stats["per_class"]
    assert k == round(confident.sum() / 4)
    for c, row in enumerate(stats["classes"]):
        n = int(np.sum(confident & (predicted == c)))
        assert row["predicted"] == int(np.sum(predicted == c))
        assert row["above_threshold"] == n
        assert row["selected"] == min(n, k) and row["copies"] == (k if n else 0)
        chosen = np.flatnonzero(confident & (predicted == c))
        truth = split.labels[chosen]
        if n <= k:  # every candidate kept: accuracy over all of them
            assert row["accuracy_selected"] == pytest.approx(np.mean(truth == c))
            assert row["cutoff"] == 0.5
        else:  # K best kept: the cut-off is the K-th confidence
            assert row["cutoff"] == pytest.approx(np.sort(probs[chosen, c])[::-1][k - 1], abs=1e-5)
    table = pseudo_labels.class_table(stats)
    assert table.count("\n") == 5 and "teacher accuracy" in table
    assert 0 <= stats["agreement_with_dataset_labels"] <= 1


@pytest.mark.parametrize("prefer", ["saved_model", "keras"])
def test_teacher_runs_clean_from_keras_file_or_saved_model(tmp_path, tiny_config, prefer):
    images = random_images(300, 16, 1, seed=5)
    teacher, model, info = _teacher(tmp_path, tiny_config, images, crop_fraction=0.75)
    path = os.path.join(teacher, "saved_model" if prefer == "saved_model" else "model.keras")
    split = in_memory_split("train", images, np.zeros(300))
    _label(path, info, split, tmp_path / "pl")
    records = read_records(str(tmp_path / "pl"))
    index = np.array([r["index"] for r in records])
    x = np.asarray(preprocess_eval(images[index], 16, 0.75), np.float32)
    expected = soften(np.asarray(model(x, training=False)))
    np.testing.assert_allclose(np.stack([r["label"] for r in records]), expected, atol=2e-5)


def test_bad_teacher_or_unlabeled_set(tmp_path, tiny_config):
    images = random_images(40, 16, 1)
    teacher, _, info = _teacher(tmp_path, tiny_config, images, num_classes=5)
    split = in_memory_split("train", images, np.arange(40) % 4)
    other = data.DatasetInfo("toy", 4, 1, ("c0", "c1", "c2", "c3"))
    with pytest.raises(ValueError, match="predicts 5 classes but toy has 4"):
        _label(teacher, other, split, tmp_path / "x")
    with pytest.raises(ValueError, match="unlabeled set is empty"):
        pseudo_labels.pseudo_label(teacher, data.StageData(info, split, labels_per_class=0),
                                   LabelConfig(), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="--num_shards=50 is more than the 40"):
        _label(teacher, info, split, tmp_path / "x", num_shards=50)
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        LabelConfig(chunk_size=0)
    assert not os.path.exists(tmp_path / "x") or not os.listdir(tmp_path / "x")
    with pytest.raises(ShardError, match="stats.json is missing"):
        load_pseudo_labels(str(tmp_path))

