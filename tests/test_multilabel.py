"""Multi-label scores and loss against hand tables and numpy from the formulas."""

import numpy as np
import pytest

from nstudent.evaluation import multilabel as ml
from nstudent.training.multilabel import balanced_bce, masked_bce_terms

# class 0 has a tie at 0.8 (one positive, one negative); class 2 has no positive
SCORES = np.array([[0.9, 0.2, 0.5], [0.8, 0.7, 0.1], [0.8, 0.6, 0.3], [0.3, 0.9, 0.2],
                   [0.1, 0.4, 0.6]])
TARGETS = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])


def _reference_ap(scores, targets):
    """Loops over the distinct scores, highest first: precision and recall of
    'positive at or above this score', AP = sum of recall steps x precision."""
    ap, last_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        called = scores >= t
        tp = np.sum(called & (targets == 1))
        recall = tp / np.sum(targets == 1)
        ap += (recall - last_recall) * tp / np.sum(called)
        last_recall = recall
    return ap


def test_average_precision_of_a_hand_table_with_a_tie():
    # class 0: cuts 0.9 (P 1, R 1/3), 0.8 tie (P 2/3, R 2/3), 0.3 (R unchanged),
    # 0.1 (P 3/5, R 1): 1/3 + 2/9 + 1/5 = 34/45
    assert ml.average_precision(SCORES[:, 0], TARGETS[:, 0]) == pytest.approx(34 / 45, abs=1e-9)
    # class 1: 0.9 (1, 1/3), 0.7 (1, 2/3), 0.6 (2/3), 0.4 (3/4, 1), 0.2: 1/3 + 1/3 + 1/4
    assert ml.average_precision(SCORES[:, 1], TARGETS[:, 1]) == pytest.approx(11 / 12, abs=1e-9)


def test_map_skips_a_class_without_positives_and_says_so():
    result = ml.mean_average_precision(SCORES, TARGETS, ["shoe", "bag", "hat"])
    assert result["skipped"] == ["hat"] and result["per_class"][2] is None
    assert result["map"] == pytest.approx((34 / 45 + 11 / 12) / 2, abs=1e-9)


def test_average_precision_equals_the_loop_reference_with_many_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((200, 4)), 1)  # 11 distinct values: ties everywhere
    targets = (rng.random((200, 4)) < 0.3).astype(int)
    result = ml.mean_average_precision(scores, targets)
    for c in range(4):
        assert result["per_class"][c] == pytest.approx(
            _reference_ap(scores[:, c], targets[:, c]), abs=1e-9)
    # the order of tied rows does not matter
    shuffled = rng.permutation(200)
    assert ml.mean_average_precision(scores[shuffled], targets[shuffled])["map"] == \
        pytest.approx(result["map"], abs=1e-12)


def test_thresholds_maximise_validation_f1_and_f1_by_hand():
    thresholds = ml.choose_thresholds(SCORES, TARGETS)
    # class 0: F1 at 0.9, 0.8, 0.3, 0.1 = 1/2, 2/3, 4/7, 3/4 -> 0.1
    # class 1: 0.9, 0.7, 0.6, 0.4, 0.2 = 1/2, 4/5, 2/3, 6/7, 3/4 -> 0.4; class 2: default
    assert thresholds.tolist() == [0.1, 0.4, ml.DEFAULT_THRESHOLD]
    f1 = ml.f1_scores(SCORES, TARGETS, [0.5, 0.5, 0.5])
    # at 0.5: class 0 tp 2 fp 1 fn 1 (F1 4/6); class 1 tp 2 fp 1 fn 1 (4/6); class 2 fp 2
    # (F1 0, defined: it predicted); micro: 2*4 / (2*4 + 4 + 2)
    assert f1["micro_f1"] == pytest.approx(8 / 14, abs=1e-9)
    assert f1["macro_f1"] == pytest.approx((4 / 6 + 4 / 6 + 0) / 3, abs=1e-9)


def _numpy_balanced_bce(targets, mask, logits):
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    means = []
    for c in range(targets.shape[1]):
        for part, weight in ((-np.log(p[:, c]), mask[:, c] * targets[:, c]),
                             (-np.log(1 - p[:, c]), mask[:, c] * (1 - targets[:, c]))):
            if weight.sum() > 0:
                means.append(np.sum(part * weight) / weight.sum())
    return np.mean(means)


def test_masked_bce_balances_parts_and_ignores_masked_entries():
    rng = np.random.default_rng(1)
    targets = (rng.random((8, 3)) < 0.3).astype(np.float32)
    targets[:, 2] = 0.0  # class 2: no positive anywhere -> only its negative part
    mask = (rng.random((8, 3)) < 0.7).astype(np.float32)
    logits = rng.normal(size=(8, 3)).astype(np.float32)
    loss = float(balanced_bce(masked_bce_terms(targets, mask, logits)))
    assert loss == pytest.approx(_numpy_balanced_bce(targets, mask, logits), rel=1e-5)
    moved = logits + 50.0 * (1 - mask)  # what a masked entry predicts does not count
    assert float(balanced_bce(masked_bce_terms(targets, mask, moved))) == pytest.approx(
        loss, rel=1e-5)


def test_two_replicas_halves_average_to_the_global_loss():
    rng = np.random.default_rng(2)
    targets = (rng.random((8, 4)) < 0.25).astype(np.float32)
    mask = (rng.random((8, 4)) < 0.8).astype(np.float32)
    logits = rng.normal(size=(8, 4)).astype(np.float32)
    whole = float(balanced_bce(masked_bce_terms(targets, mask, logits)))
    halves = [masked_bce_terms(targets[i::2], mask[i::2], logits[i::2]) for i in (0, 1)]
    total = (halves[0] + halves[1])[1::2]  # the weights' rows, summed
    shares = [float(balanced_bce(h, total, replicas=2)) for h in halves]
    assert np.mean(shares) == pytest.approx(whole, rel=1e-5)
    # a replica alone would normalise by its own half: not the global loss
    assert np.mean([float(balanced_bce(h)) for h in halves]) != pytest.approx(whole, rel=1e-3)


def test_class_weights_weigh_each_class_average():
    rng = np.random.default_rng(3)
    targets = (rng.random((10, 3)) < 0.4).astype(np.float32)
    mask = np.ones((10, 3), np.float32)
    logits = rng.normal(size=(10, 3)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    w = np.array([2.0, 1.0, 0.5])
    num = den = 0.0
    for c in range(3):  # each present (class, part) average, weighted by its class
        for part, weight in ((-np.log(p[:, c]), targets[:, c]),
                             (-np.log(1 - p[:, c]), 1 - targets[:, c])):
            if weight.sum() > 0:
                num += w[c] * np.sum(part * weight) / weight.sum()
                den += w[c]
    loss = float(balanced_bce(masked_bce_terms(targets, mask, logits), class_weights=w))
    assert loss == pytest.approx(num / den, rel=1e-5)


def test_baseline_entries_every_entry_at_half_and_top_class_only():
    from nstudent.pseudo_labels import LabelConfig
    from nstudent.pseudo_labels.multilabel import entries

    # sigmoids 0.881, 0.5, 0.018 and 0.731, 0.622, 0.269
    logits = np.array([[2.0, 0.0, -4.0], [1.0, 0.5, -1.0]])
    targets, mask, positive, _ = entries(logits, LabelConfig())  # confident at 0.7 / 0.05
    assert mask.tolist() == [[1, 0, 1], [1, 0, 0]]
    assert positive.tolist() == [[True, False, False], [True, False, False]]
    targets, mask, _, _ = entries(logits, LabelConfig(multilabel_entries="all"))
    assert targets.tolist() == [[1, 1, 0], [1, 1, 0]] and mask.min() == 1
    targets, mask, _, _ = entries(logits, LabelConfig(multilabel_entries="top_class"))
    assert targets.tolist() == [[1, 0, 0], [1, 0, 0]] and mask.min() == 1


def _bounding_box(image):
    """Rows and columns where the image differs from its corner pixel (background)."""
    differs = np.abs(image[..., 0] - image[0, 0, 0]) > 8
    rows, cols = np.flatnonzero(differs.any(1)), np.flatnonzero(differs.any(0))
    if not len(rows):  # a contrast of 0 greys the whole image: nothing to place
        return None
    return rows.min(), rows.max(), cols.min(), cols.max()


@pytest.mark.parametrize("impl", ["keras_cv", "device"])
def test_colour_only_noise_leaves_every_object_where_it_was(impl):
    """Multi-label noise (geometric off) never moves an object, at magnitude 10; with
    the geometric operations on, some image's object moves."""
    import tensorflow as tf

    from nstudent.augment import make_randaugment
    from nstudent.augment.device import DeviceNoise

    rng = np.random.default_rng(0)
    images = np.zeros((24, 56, 56, 1), np.float32)
    boxes = []
    for image in images:
        r, c = rng.integers(4, 40, 2)
        image[r:r + 12, c:c + 12] = 255.0
        boxes.append((r, r + 11, c, c + 11))

    def noised(geometric):
        if impl == "device":
            return np.asarray(DeviceNoise(2, 10.0, random_flip=False, seed=1,
                                          geometric=geometric)(images))
        fn = make_randaugment(2, 10.0, "keras_cv", seed=1, geometric=geometric)
        return np.stack([fn(tf.constant(x)).numpy() for x in images])

    def moved(out):
        return [_bounding_box(x) is not None and
                max(abs(a - b) for a, b in zip(_bounding_box(x), box)) > 1
                for x, box in zip(out, boxes)]

    assert not any(moved(noised(False)))
    assert any(moved(noised(True)))


def test_fit_bias_calibrates_the_mean_and_minimises_the_bce():
    """At the fitted shift the mean sigmoid equals the share of positives and the mean
    BCE (written out here) is lower than a little to either side; a class without a
    positive keeps 0. Logits of a loss that over-weighs positives 3:1 come back down
    by about log 3."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(400, 3)) * 2
    y = (rng.random((400, 3)) < 1 / (1 + np.exp(-z))).astype(np.float32)
    y[:, 2] = 0
    shift = ml.fit_bias(z + np.log(3.0), y)

    def bce(b, c):
        p = 1 / (1 + np.exp(-(z[:, c] + np.log(3.0) + b)))
        return -np.mean(y[:, c] * np.log(p) + (1 - y[:, c]) * np.log(1 - p))

    for c in (0, 1):
        p = 1 / (1 + np.exp(-(z[:, c] + np.log(3.0) + shift[c])))
        assert p.mean() == pytest.approx(y[:, c].mean(), abs=1e-6)
        assert bce(shift[c], c) < min(bce(shift[c] - 0.05, c), bce(shift[c] + 0.05, c))
        assert shift[c] == pytest.approx(-np.log(3.0), abs=0.35)  # sampling noise
    assert shift[2] == 0
