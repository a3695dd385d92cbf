"""Pseudo-labels: counts by hand, one global balance however sharded, a clean teacher,
labels and images checked per record, shuffled output with copies, bad input."""

import hashlib
import logging
import os
import shutil
import time

import keras
import numpy as np
import pytest

from conftest import BATCHING, CUTOFF_MARGIN, random_images
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


def test_max_copies_caps_repeats_and_leaves_the_quota_unfilled():
    # K = 5; class 0 has 4 images (1 or 2 copies each), class 1 has 2 (3 + 2), class
    # 2 has 1 (5): at most 2 copies, class 1 writes 4 and class 2 writes 2
    sel = filter_and_balance(TABLE, min_confidence=0.35, per_class=5, max_copies=2)
    assert sel.counts_balanced == [5, 4, 2]
    assert sel.rows.tolist() == [0, 1, 2, 3, 0, 5, 4, 5, 4, 7, 7]
    assert filter_and_balance(TABLE, 0.35, 5, max_copies=5).counts_balanced == [5, 5, 5]


def test_nobalance_keeps_every_image_above_the_threshold_once():
    # the paper's ablation: no top-K, no repeats; rows by class, most confident first
    sel = filter_and_balance(TABLE, min_confidence=0.35, per_class=2, balanced=False)
    assert sel.per_class == 0
    assert sel.counts_balanced == sel.counts_filtered == [4, 2, 1]
    assert sel.rows.tolist() == [0, 1, 2, 3, 5, 4, 7]


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
    keras.utils.set_random_seed(0)  # the same teacher every run
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


THRESHOLDS = (0.0, 0.5, 0.9)  # the --min_confidence values the tests select at


def clear_of_cutoffs(probs, thresholds=THRESHOLDS, margin=CUTOFF_MARGIN):
    """A mask of the images to keep so that no confidence lies within `margin` of a
    threshold or of a class's K-th confidence (K: the default, the mean count per
    class above the threshold): the images next to a cut-off are dropped until none
    is left, so batching differences (BATCHING) cannot change what is selected."""
    confidence, predicted = probs.max(-1), probs.argmax(-1)
    keep = np.ones(len(probs), bool)
    for t in thresholds:
        keep &= np.abs(confidence - t) >= margin
    changed = True
    while changed:
        changed = False
        for t in thresholds:
            above = keep & (confidence >= t)
            k = max(int(round(above.sum() / probs.shape[1])), 1)
            for c in range(probs.shape[1]):
                members = np.flatnonzero(above & (predicted == c))
                if len(members) <= k:
                    continue
                ranked = members[np.argsort(-confidence[members], kind="stable")]
                if confidence[ranked[k - 1]] - confidence[ranked[k]] < margin:
                    keep[ranked[k]] = False  # the one just below the cut
                    changed = True
    return keep


@pytest.fixture
def sorted_source(tmp_path, tiny_config):
    """About 2,400 images and a teacher; the source is sorted by the teacher's class,
    as a class-per-folder collection is, so source order would be a sorted output.
    Images at a selection cut-off are left out (clear_of_cutoffs)."""
    images = random_images(2400, 16, 1, seed=3)
    teacher, model, info = _teacher(tmp_path, tiny_config, images)
    probs = soften(np.asarray(model(images.astype(np.float32), training=False)))
    keep = clear_of_cutoffs(probs)
    images, probs = images[keep], probs[keep]
    images = images[np.argsort(probs.argmax(-1), kind="stable")]
    n = len(images)
    return teacher, model, info, in_memory_split("train", images, np.arange(n) % 4), images


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
        assert len(records) == stats["distinct_images"] == stats["records_written"] > 0
        # each image once with its copies: the examples an epoch sees, named apart
        assert stats["examples_with_copies"] == stats["records"] == sum(
            int(r["copies"]) for r in records)
        index = np.array([r["index"] for r in records])
        stored = np.stack([np.asarray(decode(r["image"], 1)) for r in records])
        np.testing.assert_array_equal(stored, images[index])  # image at its stored index
        logits = np.asarray(model(images[index].astype(np.float32), training=False))
        expected = soften(logits, config.temperature, config.hard)
        labels = np.stack([r["label"] for r in records])
        # one batch here, the labeler's blocks there: BATCHING
        np.testing.assert_allclose(labels, expected, **BATCHING)
        confidence = soften(logits, config.temperature).max(-1)
        np.testing.assert_allclose([r["confidence"] for r in records], confidence,
                                   **BATCHING)
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
    for r in b:  # shards batch the images differently: BATCHING
        np.testing.assert_allclose(r["label"], labels_a[int(r["index"])], **BATCHING)
    k = round(len(split) / 4)  # the mean count of 4 classes
    assert one["per_class"] == four["per_class"] == k
    assert [c["copies"] for c in one["classes"]] == [k] * 4
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
    # chunk 3 alone is batched otherwise than in the first run: BATCHING
    np.testing.assert_allclose(again["logits"], kept["logits"], **BATCHING)
    with pytest.raises(ShardError, match="labeled with other settings.*temperature"):
        _label(teacher, info, split, tmp_path / "a",
               LabelConfig(min_confidence=0.0, chunk_size=500, temperature=3.0),
               phase="label")


def test_selection_names_missing_partial_and_foreign_shards(sorted_source, tmp_path,
                                                            caplog):
    teacher, model, info, split, images = sorted_source
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
    assert load_pseudo_labels(str(out)).records == 4 * round(len(split) / 4)  # K x 4
    # shards from another teacher or settings cannot be selected together
    with pytest.raises(ShardError, match="labeled with other settings"):
        _label(teacher, info, split, out, LabelConfig(min_confidence=0.0, chunk_size=200,
                                                      temperature=2.0), num_shards=3)
    # a class that the filter empties is named (filtering everything: the hand table):
    # a threshold between the two lowest of the classes' top confidences
    probs = soften(np.asarray(model(images.astype(np.float32), training=False)))
    tops = np.array([probs[probs.argmax(-1) == c].max() for c in range(4)])
    lowest, second = np.sort(tops)[:2]
    assert second - lowest > 20 * BATCHING["atol"]  # ~1.5e-4 for this (seeded) teacher
    with caplog.at_level(logging.WARNING):
        stats = _label(teacher, info, split, out,
                       LabelConfig(min_confidence=float(lowest + second) / 2,
                                   chunk_size=200),
                       num_shards=3, phase="select", overwrite=True)
    empty = info.class_names[int(np.argmin(tops))]
    assert [c["class"] for c in stats["classes"] if c["above_threshold"] == 0] == [empty]
    assert f"class(es) {empty}" in caplog.text


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
            assert row["cutoff"] == pytest.approx(np.sort(probs[chosen, c])[::-1][k - 1],
                                                  rel=BATCHING["rtol"], abs=BATCHING["atol"])
    table = pseudo_labels.class_table(stats)
    assert table.count("\n") == 5 and "teacher accuracy" in table
    assert stats["agreement_with_dataset_labels"] == pytest.approx(
        np.mean(predicted == split.labels))


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
    # the teacher's batches against one batch here: BATCHING
    np.testing.assert_allclose(np.stack([r["label"] for r in records]), expected, **BATCHING)


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



def _digest_by_hand(model):
    """SHA-256 over every weight array in the model's order: dtype, shape, bytes."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{a.dtype.str}{a.shape};".encode() + a.tobytes())
    return h.hexdigest()


def test_teacher_is_its_weights_digest_not_its_path(tmp_path, tiny_config):
    images = random_images(200, 16, 1, seed=6)
    teacher, model, info = _teacher(tmp_path, tiny_config, images)
    digest = _digest_by_hand(model)
    for path in (teacher, os.path.join(teacher, "model.keras"),
                 os.path.join(teacher, "saved_model")):
        assert load_classifier(path).digest == digest
    # saved again: another zip (timestamps), the same weights, the same digest
    first = (tmp_path / "teacher" / "model.keras").read_bytes()
    time.sleep(1.1)
    config = models.ModelConfig.from_dict(load_classifier(teacher).info["model"])
    export.write_run(teacher, model, config, info, {"parameters": model.count_params()})
    assert (tmp_path / "teacher" / "model.keras").read_bytes() != first
    assert load_classifier(teacher, prefer="keras").digest == digest

    # a copy at another path (another machine's mount) labels shards of the same set
    copy = str(tmp_path / "mounted_elsewhere")
    shutil.copytree(teacher, copy)
    split = in_memory_split("train", images, np.arange(200) % 4)
    _label(teacher, info, split, tmp_path / "pl", shards=[0], num_shards=2)
    stats = _label(copy, info, split, tmp_path / "pl", shards=[1], num_shards=2)
    assert stats["settings"]["teacher_digest"] == digest
    assert read_records(str(tmp_path / "pl"))

    # retrained in place: the old labels are refused, naming both digests
    kernel = model.get_layer("logits").kernel
    kernel.assign(kernel + 0.01)
    export.write_run(teacher, model, config, info, {"parameters": model.count_params()})
    new = load_classifier(teacher).digest
    assert new != digest and new == _digest_by_hand(model)
    with pytest.raises(ShardError, match=f"teacher_digest: '{digest}' there, '{new}' now"):
        _label(teacher, info, split, tmp_path / "pl", shards=[0], num_shards=2)
    with pytest.raises(ShardError, match=f"teacher_digest: '{digest}' there, '{new}' now"):
        _label(teacher, info, split, tmp_path / "pl", num_shards=2, phase="select")


def test_heavy_repeats_warn_and_max_copies_caps_them(tmp_path, tiny_config, caplog):
    images = random_images(200, 16, 1, seed=7)
    teacher, model, info = _teacher(tmp_path, tiny_config, images)
    predicted = soften(np.asarray(model(images.astype(np.float32), training=False)))
    counts = np.bincount(predicted.argmax(-1), minlength=4)
    k = 51 * int(counts.min())  # the smallest class's images repeat 51 times
    split = in_memory_split("train", images, np.arange(200) % 4)
    with caplog.at_level(logging.WARNING):
        stats = _label(teacher, info, split, tmp_path / "a",
                       LabelConfig(min_confidence=0.0, per_class=k))
    smallest = info.class_names[int(np.argmin(counts))]
    assert f"up to 51 times (K={k})" in caplog.text and f"{smallest} (" in caplog.text
    rows = {r["class"]: r for r in stats["classes"]}
    assert rows[smallest]["most_copies_of_an_image"] == 51
    assert stats["records"] == 4 * k and stats["max_copies"] == 0
    capped = _label(teacher, info, split, tmp_path / "a",
                    LabelConfig(min_confidence=0.0, per_class=k, max_copies=10),
                    phase="select", overwrite=True)
    # by hand: n < K images each min(K // n, 10) times, plus K % n once more if uncapped
    expected = [k if n >= k else (n * 10 if k // n >= 10 else k) for n in counts]
    assert [r["copies"] for r in capped["classes"]] == expected
    assert [r["quota_unfilled"] for r in capped["classes"]] == [k - e for e in expected]
    assert max(r["most_copies_of_an_image"] for r in capped["classes"]) <= 10
    assert capped["records"] == sum(expected) == load_pseudo_labels(str(tmp_path / "a")).records
    plain = _label(teacher, info, split, tmp_path / "a",
                   LabelConfig(min_confidence=0.0, per_class=k, balance=False),
                   phase="select", overwrite=True)
    assert plain["balance"] is False and plain["per_class"] == 0
    assert [r["copies"] for r in plain["classes"]] == counts.tolist()
    assert [r["quota_unfilled"] for r in plain["classes"]] == [0] * 4
    assert plain["records"] == plain["distinct_images"] == 200


def test_calibration_and_precision_cutoffs_select_again_without_labeling_again(
        tmp_path, tiny_config):
    """A teacher calibrated at T=2 (as training records it): --calibration=temperature
    filters and labels with softmax(logits / 2) and --min_precision cuts each class at
    the precision measured on the held-out labeled images, both from the stored logits:
    `--phase=select --overwrite` selects again and the label shards stay untouched."""
    images = random_images(600, 16, 1, seed=5)
    teacher, model, info = _teacher(tmp_path, tiny_config, images)
    logits = np.asarray(model(images.astype(np.float32), training=False), np.float64)
    truth = logits.argmax(1)
    truth[::3] = (truth[::3] + 1) % 4  # a third wrong: precision below 1
    split = in_memory_split("train", images, truth)
    sd = data.StageData(info, split, labels_per_class=40, seed=0, dataset="toy",
                        validation_fraction=0.5)
    config = tiny_config.replace(num_classes=4, dropout=0.5, stochastic_depth=0.5)
    out = tmp_path / "pl"
    plain = LabelConfig(min_confidence=0.0, balance=False)
    with pytest.raises(ValueError, match="has no calibration temperature"):
        pseudo_labels.pseudo_label(teacher, sd, LabelConfig(calibration="temperature"),
                                   str(out))
    with pytest.raises(ValueError, match="does not record which labeled images it held"):
        pseudo_labels.pseudo_label(teacher, sd, LabelConfig(min_precision=0.8), str(out))
    export.write_run(teacher, model, config, info, {"parameters": model.count_params()},
                     temperature=2.0, held_out=sd.held_out())
    raw = pseudo_labels.pseudo_label(teacher, sd, plain, str(out))
    assert raw["calibration_temperature"] == 1.0 and raw["precision_cutoffs"] is None
    labels_dir = out / "labels"
    stamps = {p.name: p.stat().st_mtime_ns for p in labels_dir.iterdir()}
    tuned = LabelConfig(min_confidence=0.0, balance=False, calibration="temperature",
                        min_precision=0.8, min_precision_count=5)
    with pytest.raises(ShardError, match="other settings"):
        pseudo_labels.pseudo_label(teacher, sd, tuned, str(out), phase="select")
    stats = pseudo_labels.pseudo_label(teacher, sd, tuned, str(out), phase="select",
                                       overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in labels_dir.iterdir()} == stamps
    assert stats["calibration_temperature"] == 2.0
    # the cut-offs by hand: softmax(logits / 2) of the held-out images, their labels
    held = sd.validation_indices
    probs = soften(logits[held], 2.0)
    expected = pseudo_labels.precision_cutoffs(probs.max(1), probs.argmax(1), truth[held],
                                               4, 0.8, 5, 0.0)
    got = stats["precision_cutoffs"]
    assert [c["source"] for c in got] == [c.source for c in expected]
    assert [c["held_out"] for c in got] == [c.held_out for c in expected]
    for g, e in zip(got, expected):
        if e.source == "none":
            assert g["cutoff"] is None
        else:
            np.testing.assert_allclose(g["cutoff"], e.cutoff, **BATCHING)
    records = read_records(str(out))
    index = np.array([r["index"] for r in records])
    calibrated = soften(logits[index], 2.0)
    np.testing.assert_allclose(np.stack([r["label"] for r in records]), calibrated,
                               **BATCHING)
    cutoff = np.array([np.inf if e.source == "none" else e.cutoff for e in expected])
    assert np.all(calibrated.max(1) >= cutoff[calibrated.argmax(1)] - 1e-4)
    # every unlabeled image clear of its class's cut-off is kept exactly when above it
    rest = sd.unlabeled[1]
    conf = soften(logits[rest], 2.0)
    above = conf.max(1) >= cutoff[conf.argmax(1)]
    clear = np.abs(conf.max(1) - cutoff[conf.argmax(1)]) > 1e-4
    assert set(rest[above & clear]) <= set(index) and not set(rest[~above & clear]) & set(
        index)
    assert raw["records"] != stats["records"]  # the cut-offs changed the selection


def test_to_label_lists_the_smallest_margins_first(sorted_source, tmp_path):
    import csv

    teacher, model, info, split, images = sorted_source
    _label(teacher, info, split, tmp_path / "pl", LabelConfig(min_confidence=0.0,
                                                               to_label=12))
    with open(tmp_path / "pl" / "to_label.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    probs = soften(np.asarray(model(images.astype(np.float32), training=False)))
    top2 = np.sort(probs, axis=1)[:, ::-1][:, :2]
    margin = top2[:, 0] - top2[:, 1]  # by hand, over every unlabeled image
    got = [float(r["margin"]) for r in rows]
    assert got == sorted(got)
    index = np.array([int(r["index"]) for r in rows])
    np.testing.assert_allclose(got, margin[index], atol=1e-5)
    twelfth = np.sort(margin)[11]
    clearly_in = np.flatnonzero(margin < twelfth - 1e-4)
    assert set(clearly_in) <= set(index)  # the smallest margins, whatever the batching
    names = info.class_names
    for r, i in zip(rows, index):
        assert r["class_1"] == names[int(probs[i].argmax())]
        assert float(r["probability_1"]) >= float(r["probability_2"])
    with pytest.raises(ValueError, match="--to_label must not be negative"):
        LabelConfig(to_label=-1)


def test_contact_sheets_show_the_best_the_cut_off_and_the_best_left_out(tmp_path):
    from nstudent.pseudo_labels import sheets

    # class 0: kept 10 (0.9), 11 (0.8), 12 (0.7); left out 13 (0.6), 14 (0.5)
    # class 1: kept 20 (0.95); left out nothing
    predicted = np.array([0, 0, 0, 0, 0, 1])
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95])
    index = np.array([10, 11, 12, 13, 14, 20])
    kept = np.array([True, True, True, False, False, True])
    chosen = sheets.choose(predicted, confidence, index, kept, 3, k=2)
    assert chosen[0] == [[(10, 0.9), (11, 0.8)], [(12, 0.7), (11, 0.8)],
                         [(13, 0.6), (14, 0.5)]]
    assert chosen[1] == [[(20, 0.95)], [(20, 0.95)], []]
    assert chosen[2] == [[], [], []]  # a class nobody predicts: an empty sheet
    images = random_images(21, 12, 1)
    split = in_memory_split("u", images, np.full(21, -1))
    headings = [sheets.heading(n, c) for n, c in zip(["a/b", "c", "d"], [0.7, 0.95, None])]
    assert headings == ["a/b: cut-off 0.700", "c: cut-off 0.950", "d: cut-off none kept"]
    paths = sheets.write_sheets(split, chosen, ["a/b", "c", "d"], str(tmp_path), headings)
    assert [os.path.basename(p) for p in paths] == ["a_b.png", "c.png", "d.png"]
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in paths)
    assert os.listdir(tmp_path / "pictures" / "logs")  # the TensorBoard summaries
