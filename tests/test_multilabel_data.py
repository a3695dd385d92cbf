"""Multi-label data: a folder with a labels file, TFRecords with a label list, the
labeled subset by positives per class, and the mosaic set the bench builds."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import random_images

from nstudent import data
from nstudent.data import DataError, split_labeled
from nstudent.data.sources import DEBIAN_FASHION_MNIST
from nstudent.data.subsets import carve_validation, positives_per_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, split, rows, images=None):
    """Writes <root>/<split>/ with PNGs and labels.csv rows (path, classes)."""
    folder = root / split
    for path, _ in rows:
        (folder / os.path.dirname(path)).mkdir(parents=True, exist_ok=True)
    for (path, _), image in zip(rows, random_images(len(rows), 8, 3)):
        tf.io.write_file(str(folder / path), tf.io.encode_png(image))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "labels"], *rows])


def test_folder_with_a_labels_file_gives_multi_hot_rows(tmp_path):
    _folder(tmp_path, "train", [("a.png", "dog;sofa"), ("sub/b.png", ""), ("c.png", "cat")])
    _folder(tmp_path, "test", [("x.png", "sofa;cat;dog")])
    info, splits = data.load(f"folder:{tmp_path}", channels=1, task="multilabel",
                             labels_file="labels.csv")
    assert info.task == "multilabel" and info.class_names == ("cat", "dog", "sofa")
    # cat dog sofa, by hand
    assert splits["train"].labels.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert splits["test"].labels.tolist() == [[1, 1, 1]]
    image, label = next(iter(splits["train"].dataset([2])))
    assert image.shape == (8, 8, 1) and label.numpy().tolist() == [1, 0, 0]


@pytest.mark.parametrize("test_rows, message", [
    ([("x.png", "sofa;horse")], "unknown class(es) ['horse']"),
    ([("x.png", "cat"), ("gone.png", "cat")], "line 3: no image"),
])
def test_folder_labels_file_names_what_is_wrong(tmp_path, test_rows, message):
    _folder(tmp_path, "train", [("a.png", "dog;sofa"), ("c.png", "cat")])
    _folder(tmp_path, "test", test_rows[:1])
    if len(test_rows) > 1:  # a row whose image is not there
        with open(tmp_path / "test" / "labels.csv", "a", newline="") as f:
            csv.writer(f).writerow(test_rows[1])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        data.load(f"folder:{tmp_path}", channels=1, task="multilabel",
                  labels_file="labels.csv")


def test_task_and_labels_file_must_agree(tmp_path):
    with pytest.raises(DataError, match="--labels_file is for --task=multilabel"):
        data.load(f"folder:{tmp_path}", labels_file="labels.csv")
    with pytest.raises(DataError, match="needs --labels_file"):
        data.load(f"folder:{tmp_path}", task="multilabel")
    with pytest.raises(DataError, match="--task=multilabel reads folder"):
        data.load("fashion_mnist", task="multilabel")


def test_tfrecords_with_a_labels_list(tmp_path):
    rows = {"train": [[0, 2], [], [1]], "test": [[2]]}
    for split, lists in rows.items():
        with tf.io.TFRecordWriter(str(tmp_path / f"{split}-0.tfrecord")) as w:
            for classes, image in zip(lists, random_images(len(lists), 8, 1)):
                feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[tf.io.encode_png(image).numpy()])),
                    "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=classes))}
                w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                        .SerializeToString())
    info, splits = data.load(f"tfrecord:{tmp_path}", channels=1, task="multilabel")
    assert info.num_classes == 3 and info.task == "multilabel"
    assert splits["train"].labels.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(DataError, match="outside the class range"):
        data.load(f"tfrecord:{tmp_path}", channels=1, task="multilabel", num_classes=2)
    single = tmp_path / "single"  # records of a multiclass set: `label`, no `labels`
    single.mkdir()
    with tf.io.TFRecordWriter(str(single / "train-0.tfrecord")) as w:
        feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
                   "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))}
        w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                .SerializeToString())
    with pytest.raises(DataError, match="needs an int64 list feature 'labels'"):
        data.load(f"tfrecord:{single}", ("train",), channels=1, task="multilabel")


def test_labeled_subset_reaches_k_positives_per_class_seeded():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 4)) < [0.5, 0.2, 0.1, 0.05]).astype(np.int64)
    labeled, unlabeled = split_labeled(labels, 4, 5, seed=3)
    counts = positives_per_class(labels, labeled)
    assert min(counts) >= 5 and counts[0] > 5  # the frequent class ends above K
    assert len(np.intersect1d(labeled, unlabeled)) == 0
    assert len(labeled) + len(unlabeled) == 300 and len(labeled) < 100
    # every image kept was a positive of a class still short of K when it came
    assert np.array_equal(labeled, split_labeled(labels, 4, 5, seed=3)[0])
    assert not np.array_equal(labeled, split_labeled(labels, 4, 5, seed=4)[0])
    assert all(labels[i].any() for i in labeled)
    with pytest.raises(DataError, match="class 3 has only"):
        split_labeled(labels, 4, int(labels[:, 3].sum()) + 1, seed=0)
    train, validation = carve_validation(labeled, labels, 0.2, seed=3)
    assert len(validation) == round(0.2 * len(labeled))
    assert np.array_equal(np.sort(np.concatenate([train, validation])), labeled)


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_mosaics_bench_writes_a_set_the_loader_reads(tmp_path):
    out = tmp_path / "mosaics"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "mosaics.py"), f"--out={out}",
         "--train_mosaics=30", "--test_mosaics=10", "--unlabeled_mosaics=20",
         "--empty_probability=0.3", "--seed=1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-2000:]
    _, splits = data.load(f"folder:{out}/labeled", channels=1, task="multilabel",
                             labels_file="labels.csv")
    assert len(splits["train"]) == 30 and len(splits["test"]) == 10
    summary = json.load(open(out / "mosaics.json"))
    assert summary["seed"] == 1 and summary["empty_probability"] == 0.3
    hidden = list(csv.reader(open(out / "unlabeled_labels.csv")))[1:]
    assert len(hidden) == 20 == len(data.load_unlabeled(f"folder:{out}/unlabeled", 1))
    # each mosaic: 56 px; an empty cell is black; a class per filled cell at most
    for image, label in splits["train"].dataset().as_numpy_iterator():
        assert image.shape == (56, 56, 1)
        cells = [image[r:r + 28, c:c + 28].max() > 0 for r in (0, 28) for c in (0, 28)]
        assert 0 < label.sum() <= sum(cells) or label.sum() == sum(cells) == 0
    per_image = splits["train"].labels.sum(axis=1).mean()
    assert summary["sets"]["train"]["labels_per_image"] == pytest.approx(per_image, abs=1e-4)


def _reference_ap(scores, targets):
    """AP by a loop over the distinct scores, highest first (ties enter together)."""
    ap, last = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        called = scores >= t
        tp = np.sum(called & (targets == 1))
        ap += (tp / np.sum(targets == 1) - last) * tp / np.sum(called)
        last = tp / np.sum(targets == 1)
    return ap


@pytest.fixture(scope="module")
def ml_teacher(tmp_path_factory):
    """A tiny multi-label folder (3 classes, 16 px) and a 1-epoch teacher on 3 positives
    per class; the rest of the train split is its unlabeled pool (labels hidden)."""
    import keras

    from nstudent import models, training

    root = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(0)
    names = ["cat", "dog", "sofa"]

    def rows(n):
        return [(f"{i}.png", ";".join(c for c in names if rng.random() < 0.5))
                for i in range(n)]

    _folder(root, "train", rows(40))
    _folder(root, "test", rows(10))
    info, splits = data.load(f"folder:{root}", channels=1, task="multilabel",
                             labels_file="labels.csv")
    stage_data = data.StageData(info, splits["train"], splits["test"], labels_per_class=4,
                                validation_fraction=0.25)
    config = models.ModelConfig(num_classes=3, channels=1, image_size=16, width_scale=0.25,
                                depth_scale=0.25)
    keras.utils.set_random_seed(0)
    out = root / "teacher"
    metrics = training.train_teacher(
        str(out), stage_data, config, data.InputConfig(image_size=16, batch_size=4),
        training.TrainConfig(epochs=1, bn_recalibration_batches=1))
    network = keras.saving.load_model(str(out / "model.keras"), compile=False)
    return root, splits, stage_data, out, metrics, network


def _logits(network, split, indices=None):
    """The network's logits on `split` at `indices`, through evaluation's preprocessing."""
    batches = data.eval_dataset(split.dataset(indices), 3,
                                data.InputConfig(image_size=16, batch_size=8))
    return np.concatenate([np.asarray(network(x, training=False)) for x, _ in batches])


def test_multilabel_teacher_scores_thresholds_and_serving(ml_teacher):
    """Test mAP from the teacher's own `.keras` logits, thresholds taken from held-out
    scores (never test), serving equal to the `.keras` model with labels at those
    thresholds."""
    _, splits, stage_data, out, metrics, network = ml_teacher
    assert metrics["task"] == "multilabel" and (out / "average_precision.png").exists()
    y = splits["test"].labels
    logits = _logits(network, splits["test"])
    present = [c for c in range(3) if y[:, c].any()]
    assert metrics["test_map"] == pytest.approx(np.mean(
        [_reference_ap(logits[:, c], y[:, c]) for c in present]), abs=1e-5)
    thresholds = json.load(open(out / "model_info.json"))["thresholds"]
    held = 1 / (1 + np.exp(-_logits(network, splits["train"], stage_data.validation_indices)))
    for c, t in enumerate(thresholds):  # a held-out score of its class (or the default)
        assert t == 0.5 or np.min(np.abs(held[:, c] - t)) < 1e-5
    # the exported head is calibrated on the held-out images: per class (with positives
    # and negatives there), the mean sigmoid is the share of positives
    truth = splits["train"].labels[stage_data.validation_indices]
    for c in range(3):
        if 0 < truth[:, c].mean() < 1:
            assert held[:, c].mean() == pytest.approx(truth[:, c].mean(), abs=1e-3)
    # the held-out mAP recorded is the exported model's
    assert metrics["validation_map"] == pytest.approx(np.mean(
        [_reference_ap(held[:, c], truth[:, c]) for c in range(3) if truth[:, c].any()]),
        abs=1e-5)
    images = np.stack([x for x, _ in splits["test"].dataset().as_numpy_iterator()])
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"](
        images=tf.constant(images))
    # float noise on logits of hundreds (a 1-epoch toy): 1e-3 still tells sigmoid from softmax
    np.testing.assert_allclose(served["probabilities"].numpy(), p, atol=1e-3)
    clear = np.abs(p - np.asarray(thresholds)) > 1e-3  # not on a threshold's edge
    assert np.array_equal(served["labels"].numpy()[clear],
                          (p >= np.asarray(thresholds))[clear].astype(np.int64))


def test_confident_entries_and_class_weights_by_hand():
    from nstudent.pseudo_labels.multilabel import class_weights, confident_entries

    # sigmoid of 2, 0, -4 = 0.881, 0.5, 0.018: positive, masked, negative at 0.7 / 0.05
    targets, mask, _ = confident_entries(np.array([[2.0, 0.0, -4.0]]), 0.7, 0.05)
    assert mask.tolist() == [[1, 0, 1]]
    np.testing.assert_allclose(targets, [[0.880797, 0.5, 0.017986]], atol=1e-6)
    hard, _, _ = confident_entries(np.array([[2.0, 0.0, -4.0]]), 0.7, 0.05, hard=True)
    assert hard.tolist() == [[1, 0, 0]]
    # at temperature 2: sigmoid(1) = 0.731 still positive; sigmoid(-2) = 0.119 masked
    assert confident_entries(np.array([[2.0, 0.0, -4.0]]), 0.7, 0.05, 2.0)[1].tolist() == \
        [[1, 0, 0]]
    # positives 10, 30, 0: mean of the present 20 -> 2, 2/3, 0
    np.testing.assert_allclose(class_weights([10, 30, 0]), [2.0, 2 / 3, 0.0])


def test_multilabel_pseudo_labels_equal_the_teachers_sigmoids(ml_teacher, tmp_path):
    """Every stored target is the teacher's sigmoid for that image and every mask its
    confident entries; the per-class counts, precision and recall against the hidden
    labels match numpy; new thresholds re-select without labeling again."""
    from nstudent.pseudo_labels import LabelConfig, pseudo_label, read_records

    _, _, stage_data, out, _, network = ml_teacher
    split, unlabeled = stage_data.unlabeled
    p = 1 / (1 + np.exp(-_logits(network, split, unlabeled).astype(np.float64)))
    truth = split.labels[unlabeled] > 0
    labels_dir = tmp_path / "labels"
    config = LabelConfig(positive_threshold=0.6, negative_threshold=0.3)
    stats = pseudo_label(str(out), stage_data, config, str(labels_dir))
    positive, negative = p >= 0.6, p <= 0.3
    kept = (positive | negative).any(axis=1)
    # entries within float noise of a threshold may fall either way: not compared
    edge = (np.abs(p - 0.6) < 1e-3) | (np.abs(p - 0.3) < 1e-3)
    clear = ~(edge.any(axis=1))
    assert stats["task"] == "multilabel"
    records = {int(r["index"]): r for r in read_records(str(labels_dir))}
    assert stats["distinct_images"] == len(records)
    assert set(unlabeled[kept & clear]) <= set(records)
    assert not set(unlabeled[~kept & clear]) & set(records)
    row_of = {int(i): k for k, i in enumerate(unlabeled)}
    for i, r in records.items():
        np.testing.assert_allclose(r["label"], p[row_of[i]], atol=1e-3)  # float noise
        near = edge[row_of[i]]
        assert np.array_equal(r["mask"][~near], (positive | negative)[row_of[i]][~near])
    for c, row in enumerate(stats["classes"]):
        if edge[:, c].any():
            continue
        assert row["positives"] == positive[kept, c].sum()
        assert row["negatives"] == negative[kept, c].sum()
        tp = (positive[:, c] & truth[:, c]).sum()
        assert row["positive_recall"] == pytest.approx(tp / truth[:, c].sum())
        if positive[:, c].any():
            assert row["positive_precision"] == pytest.approx(tp / positive[:, c].sum())
    chunk = next((labels_dir / "labels").glob("shard-*/chunk-*.npz"))
    before = chunk.stat().st_mtime_ns
    again = pseudo_label(str(out), stage_data, LabelConfig(positive_threshold=0.9,
                                                           negative_threshold=0.01),
                         str(labels_dir), overwrite=True, phase="select")
    assert chunk.stat().st_mtime_ns == before  # selected again, not labeled again
    assert sum(r["positives"] for r in again["classes"]) == (p >= 0.9)[
        ((p >= 0.9) | (p <= 0.01)).any(axis=1)].sum()
    names = stage_data.info.class_names
    sheets = sorted(os.listdir(labels_dir / "pictures"))
    assert [f"{n}.png" for n in sorted(names)] == [x for x in sheets if x.endswith(".png")]
    assert again["pictures"] == f"{labels_dir}/pictures"


def test_multilabel_sheets_per_class_positives_and_the_rest_by_hand():
    """Per class, from that class's sigmoid: the most probable positives, the positives
    nearest the cut-off, the most probable entries that are not positive (ties: the
    lower index); a class without positives has only the last row."""
    from nstudent.pseudo_labels import sheets

    p = np.array([[0.9, 0.1], [0.8, 0.6], [0.7, 0.6], [0.4, 0.2], [0.5, 0.3]])
    positive = p >= 0.7
    index = np.array([3, 1, 4, 0, 2])
    chosen = sheets.choose_multilabel(p, positive, index, k=2)
    assert chosen[0] == [[(3, 0.9), (1, 0.8)], [(4, 0.7), (1, 0.8)],
                         [(2, 0.5), (0, 0.4)]]
    assert chosen[1] == [[], [], [(1, 0.6), (4, 0.6)]]
    assert sheets.candidates(chosen) == [0, 1, 2, 3, 4]


def test_multilabel_sheets_chosen_chunk_by_chunk_equal_one_choice_over_all():
    """Selection streams chunks and keeps only each chunk's candidates: the final
    choice over them is the choice over every image at once."""
    from nstudent.pseudo_labels import multilabel, sheets

    rng = np.random.default_rng(0)
    p = rng.random((500, 4)).round(2)  # many ties
    positive = p >= 0.6
    index = rng.permutation(500)
    shown = {"probabilities": [], "positive": [], "index": []}
    for part in np.array_split(np.arange(500), 7):
        multilabel._add_candidates(shown, p[part], positive[part], index[part])
    shown = {k: np.concatenate(v) for k, v in shown.items()}
    assert len(shown["index"]) < 500
    assert sheets.choose_multilabel(**shown) == sheets.choose_multilabel(p, positive, index)


@pytest.mark.parametrize("tool, args, message", [
    ("train.py", ["--task=multilabel", "--crop=random_resized", "--out=o"],
     "needs --crop=pad"),
    ("finetune.py", ["--task=multilabel", "--run=/nonexistent"],
     "this tool does not in this version"),
    ("pseudo_label.py", ["--task=multilabel", "--teacher=/x", "--positive_threshold=0.1",
                         "--negative_threshold=0.2", "--out=o"],
     "must be above --negative_threshold"),
    ("pseudo_label.py", ["--teacher=/x", "--positive_threshold=0.9", "--out=o"],
     "--positive_threshold is for --task=multilabel"),
    ("pseudo_label.py", ["--task=multilabel", "--teacher=/x", "--to_label=5", "--out=o"],
     "--to_label is for single-label pseudo-labels"),
])
def test_multilabel_bad_settings_one_line_exit_2(tmp_path, tool, args, message):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", tool), f"--dataset=folder:{tmp_path}",
         *(f"--out={tmp_path}/o" if a == "--out=o" else a for a in args)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "o")


def test_two_stage_multilabel_pipeline(ml_teacher, tmp_path):
    """Teacher -> confident entries -> a masked student from scratch, on the tiny set:
    the student trains on both streams and reports its test mAP; a single-label
    teacher's pseudo-labels for this multi-label data are refused."""
    from nstudent import models, training
    from nstudent.pseudo_labels import LabelConfig, load_pseudo_labels, pseudo_label

    _, _, stage_data, out, _, _ = ml_teacher
    labels_dir = tmp_path / "labels"
    pseudo_label(str(out), stage_data, LabelConfig(positive_threshold=0.6,
                                                   negative_threshold=0.3), str(labels_dir))
    pseudo = load_pseudo_labels(str(labels_dir))
    assert pseudo.multilabel and len(pseudo.stats["class_weights"]) == 3
    image, label = next(iter(pseudo.dataset()))
    assert label.shape == (6,)  # targets and mask side by side
    config = models.ModelConfig(num_classes=3, channels=1, image_size=16, width_scale=0.25,
                                depth_scale=0.25)
    metrics = training.train_student(
        str(tmp_path / "student"), stage_data, pseudo, config,
        data.InputConfig(image_size=16, batch_size=2),
        training.TrainConfig(epochs=1, steps_per_epoch=2, bn_recalibration_batches=1),
        training.StudentConfig(unlabeled_ratio=2))
    assert metrics["task"] == "multilabel" and 0 <= metrics["test_map"] <= 1
    assert metrics["optimizer_iterations"] == 2
    assert {"labeled_loss", "pseudo_loss", "labeled_auc_pr"} <= set(metrics["last_epoch"])
    single = data.StageData(data.DatasetInfo("x", 3, 1, ("cat", "dog", "sofa")),
                            stage_data.train, stage_data.test, labels_per_class=0)
    with pytest.raises(DataError, match="are multi-label; this run's data is single-label"):
        training.train_student(str(tmp_path / "s2"), single, pseudo, config,
                               data.InputConfig(image_size=16, batch_size=2),
                               training.TrainConfig(epochs=1))


def _tool(*args):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)


def test_evaluate_tool_scores_a_multilabel_run_as_its_run_did(ml_teacher, tmp_path):
    """tools/evaluate.py on the run: the test mAP and F1 at the recorded thresholds that
    the run itself reported; without --task=multilabel, one line and exit 2."""
    root, _, _, out, metrics, _ = ml_teacher
    common = [os.path.join(ROOT, "tools", "evaluate.py"), f"--model={out}",
              f"--dataset=folder:{root}", "--channels=1"]
    result = _tool(*common, "--task=multilabel", "--labels_file=labels.csv",
                   f"--output={tmp_path}/ev.json")
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.load(open(tmp_path / "ev.json"))
    assert scores["map"] == pytest.approx(metrics["test_map"], abs=1e-5)
    assert scores["micro_f1"] == pytest.approx(metrics["test_micro_f1"], abs=1e-5)
    assert scores["thresholds"] == metrics["thresholds"]
    assert f"mAP {metrics['test_map']:.4f}" in result.stdout
    refused = _tool(*common)
    assert refused.returncode == 2 and "pass --task=multilabel" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_predict_writes_every_class_above_its_threshold_as_served(ml_teacher, tmp_path):
    """tools/predict.py on new images: each row's classes are those serving_default
    marks in `labels`, and its probabilities are the served sigmoids."""
    root, splits, _, out, _, _ = ml_teacher
    csv_path = tmp_path / "p.csv"
    result = _tool(os.path.join(ROOT, "tools", "predict.py"), f"--model={out}",
                   f"--input=folder:{root}/test", f"--output={csv_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.reader(open(csv_path)))
    names = json.load(open(out / "model_info.json"))["dataset"]["class_names"]
    assert rows[0] == ["image", "labels", *names] and len(rows) == 11
    serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    thresholds = np.asarray(json.load(open(out / "model_info.json"))["thresholds"])
    images = dict(zip(splits["test"].paths, (x for x, _ in splits["test"].dataset())))
    for row in rows[1:]:
        served = serve(images=images[row[0]][None])
        p = served["probabilities"].numpy()[0]
        np.testing.assert_allclose([float(v) for v in row[2:]], p, atol=1e-3)
        clear = np.abs(p - thresholds) > 1e-3  # not on a threshold's edge
        written = np.array([n in row[1].split(";") for n in names])
        assert np.array_equal(written[clear], served["labels"].numpy()[0][clear] > 0)


def test_fgsm_of_a_multilabel_model_steps_on_the_summed_bce(ml_teacher):
    """The input gradient is that of sum over classes of the binary cross-entropy
    (softplus(z) - y z per entry, written out here), not of a softmax cross-entropy;
    the report scores mAP, with FGSM at 0 equal to the clean mAP of the run."""
    from nstudent.evaluation import load_classifier, robustness_report
    from nstudent.evaluation.robustness import input_gradient

    _, splits, stage_data, out, metrics, network = ml_teacher
    batches = data.eval_dataset(splits["test"].dataset(), 3,
                                data.InputConfig(image_size=16, batch_size=10))
    x, y = next(iter(batches))
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        z = network(x, training=False)
        loss = tf.reduce_sum(tf.nn.softplus(z) - tf.cast(y, tf.float32) * z)
    reference = tape.gradient(loss, x).numpy()
    mine = input_gradient(network, x.numpy(), y.numpy(), multilabel=True)
    np.testing.assert_allclose(mine, reference, rtol=1e-3,
                               atol=1e-4 * np.abs(reference).max())
    softmax = input_gradient(network, x.numpy(), y.numpy())
    assert not np.array_equal(np.sign(softmax), np.sign(reference))
    report = robustness_report(load_classifier(str(out), prefer="keras", multilabel=True),
                               splits["test"], stage_data.info, 16, 8,
                               corruptions=("contrast",), severities=(3,),
                               epsilons=(0.0, 8 / 255))
    assert report["metric"] == "map"
    assert report["clean_map"] == pytest.approx(metrics["test_map"], abs=1e-5)
    assert report["fgsm"]["0"] == pytest.approx(report["clean_map"], abs=1e-6)
    assert 0 <= report["mean_corruption_map"] <= 1 and "8/255: mAP" in \
        __import__("nstudent.evaluation", fromlist=["report_table"]).report_table(report)


def test_pipeline_tool_runs_a_multilabel_generation_and_reports_map(ml_teacher, tmp_path):
    """tools/pipeline.py --task=multilabel: teacher, confident-entry pseudo-labels, a
    student, robustness; the table and the final line report mAP, each row the test
    mAP its run recorded."""
    root, _, _, _, _, _ = ml_teacher
    out = tmp_path / "run"
    result = _tool(os.path.join(ROOT, "tools", "pipeline.py"), f"--dataset=folder:{root}",
                   "--task=multilabel", "--labels_file=labels.csv", "--channels=1",
                   "--labels_per_class=4", "--validation_fraction=0.25", "--model=b0",
                   "--width_scale=0.25", "--depth_scale=0.25", "--image_size=16",
                   "--batch_size=4", "--epochs=1", "--student_steps=2",
                   "--unlabeled_ratio=2", "--positive_threshold=0.6",
                   "--negative_threshold=0.3", "--generations=1",
                   "--corruptions=contrast", "--fgsm_epsilons=2/255",
                   "--robustness_examples=10", "--bn_recalibration_batches=1",
                   f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| gen | model | parameters | test mAP | micro F1 | macro F1 |" in result.stdout
    assert "mean corruption mAP" in result.stdout
    for g in ("gen0", "gen1"):
        recorded = json.load(open(out / g / "metrics.json"))["test_map"]
        assert f"{recorded:.4f}" in result.stdout
    assert json.load(open(out / "pseudo_labels_for_gen1" / "stats.json"))["task"] == \
        "multilabel"
    assert "teacher (gen0) test mAP" in result.stdout
    assert (out / "accuracy.png").exists()
    refused = _tool(os.path.join(ROOT, "tools", "pipeline.py"), f"--dataset=folder:{root}",
                    "--task=multilabel", "--finetune_resolution=32", f"--out={tmp_path}/x")
    assert refused.returncode == 2 and "--finetune_resolution is not for" in refused.stderr
