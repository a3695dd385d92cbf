"""SimCLRv2 stages: NT-Xent, the projection head, fine-tuning from a middle layer of
it, distillation, LARS, the views, kNN, and the pipeline that chains them."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import TINY, random_images
from test_tools import ROOT, run_tool

def numpy_nt_xent(z_a, z_b, temperature):
    """NT-Xent as google-research/simclr's `add_contrastive_loss` computes it, in
    numpy: for each image i, the cross-entropy of view a against [b; a without
    itself] plus that of view b against [a; b without itself], averaged over the N
    images. That is 2x the paper's Algorithm 1 (the mean over the 2N anchors)."""
    z_a = np.asarray(z_a, np.float64)
    z_b = np.asarray(z_b, np.float64)
    z_a /= np.linalg.norm(z_a, axis=1, keepdims=True)
    z_b /= np.linalg.norm(z_b, axis=1, keepdims=True)
    n = len(z_a)
    large = 1e9
    masks = np.eye(n)

    def cross_entropy(logits, labels):
        logits = logits - logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -(labels * log_p).sum(1)

    logits_aa = z_a @ z_a.T / temperature - masks * large
    logits_bb = z_b @ z_b.T / temperature - masks * large
    logits_ab = z_a @ z_b.T / temperature
    logits_ba = z_b @ z_a.T / temperature
    labels = np.concatenate([np.eye(n), np.zeros((n, n))], 1)
    loss_a = cross_entropy(np.concatenate([logits_ab, logits_aa], 1), labels)
    loss_b = cross_entropy(np.concatenate([logits_ba, logits_bb], 1), labels)
    hits = np.concatenate([np.concatenate([logits_ab, logits_aa], 1).argmax(1),
                           np.concatenate([logits_ba, logits_bb], 1).argmax(1)]) == np.tile(
        np.arange(n), 2)
    return float(np.mean(loss_a + loss_b)), float(np.mean(hits))


def algorithm_1(z_a, z_b, temperature):
    """The paper's Algorithm 1: the mean over the 2N anchors (each against the other
    2N - 1, its partner the positive)."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z_a)
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        sims = np.array([z[i] @ z[j] / temperature for j in range(2 * n) if j != i])
        losses.append(-(z[i] @ z[partner] / temperature) + np.log(np.exp(sims).sum()))
    return float(np.mean(losses))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_a_direct_numpy_computation(temperature):
    from nstudent.pretraining import nt_xent

    rng = np.random.default_rng(1)
    z_a = rng.normal(size=(6, 5)).astype("float32")
    z_b = (z_a + rng.normal(scale=0.8, size=(6, 5))).astype("float32")
    loss, accuracy = nt_xent(z_a, z_b, temperature)
    want_loss, want_accuracy = numpy_nt_xent(z_a, z_b, temperature)
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert want_loss == pytest.approx(2 * algorithm_1(z_a, z_b, temperature), rel=1e-12)
    assert float(accuracy) == pytest.approx(want_accuracy)
    assert 0 < want_accuracy < 1  # a batch where some anchors miss: the count is real
    with pytest.raises(ValueError, match="temperature must be positive"):
        nt_xent(z_a, z_b, 0.0)


def test_nt_xent_across_two_replicas_equals_one_replica_with_the_global_batch():
    """2 logical CPUs, 4 images each: with the gather, the mean of the replicas' losses
    and the sum of their (1/replicas-scaled) gradients equal one device's on all 8;
    without it each replica's loss is NT-Xent of its own 4, which differs."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests",
                                                          "contrastive_replica_check.py")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["replicas"] == 2
    x_a, x_b = (np.asarray(x, np.float32) for x in r["x"])
    z_a, z_b = x_a @ np.asarray(r["w"], np.float32), x_b @ np.asarray(r["w"], np.float32)
    want, _ = numpy_nt_xent(z_a, z_b, r["temperature"])
    assert r["single_loss"] == pytest.approx(want, rel=1e-5)
    assert np.mean(r["gathered_losses"]) == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(r["gathered_grad"], r["single_grad"], rtol=1e-4, atol=1e-6)
    for k, loss in enumerate(r["local_losses"]):
        half = slice(4 * k, 4 * k + 4)
        assert loss == pytest.approx(numpy_nt_xent(z_a[half], z_b[half],
                                                   r["temperature"])[0], rel=1e-5)
    assert abs(np.mean(r["local_losses"]) - want) > 1e-3
    assert np.abs(np.subtract(r["local_grad"], r["single_grad"])).max() > 1e-4


def test_colour_jitter_factors_stay_non_negative_above_strength_1_25():
    """At strength 2 the factors reach 1 - 1.6 < 0; clamped at 0 as the reference's, a
    brightness factor never blacks out a grey image (unclamped, ~15% of them)."""
    from nstudent.augment import ContrastiveViews

    views = ContrastiveViews(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                             random_flip=False, jitter_strength=2.0, seed=0)
    images = np.full((400, 8, 8, 1), 128, np.uint8)
    out = np.asarray(views(images, training=True))
    assert (out.max(axis=(1, 2, 3)) > 0).all()
    assert (out.reshape(400, -1).std(1) < 1e-3).all()  # brightness/contrast only: flat
    assert len(np.unique(out[:, 0, 0, 0].round(3))) > 100  # and jittered


def test_projection_head_has_the_specified_layers(tiny_config):
    from nstudent.models import feature_width
    from nstudent.models import HeadConfig, build_pretrain_network

    network = build_pretrain_network(tiny_config, HeadConfig(layers=3, dim=16))
    width = feature_width(tiny_config)
    head = [layer for layer in network.layers if layer.name.startswith("head_")]
    assert [layer.name for layer in head] == [
        "head_dense_1", "head_bn_1", "head_relu_1", "head_dense_2", "head_bn_2",
        "head_relu_2", "head_dense_3", "head_bn_3"]  # no ReLU after the last
    dense = [layer for layer in head if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [width, width, 16]
    assert not any(layer.use_bias for layer in dense)  # batch norm follows each
    # the last batch norm has no offset (the reference's center=False), the others do
    assert [layer.center for layer in head if isinstance(
        layer, keras.layers.BatchNormalization)] == [True, True, False]
    out = network(random_images(3, 16, 1).astype("float32"))
    assert out["embeddings"].shape == (3, width) and out["projections"].shape == (3, 16)
    assert network.get_layer("head_dense_1").input.shape[-1] == width  # on the pooled features
    with pytest.raises(ValueError, match="--proj_head_layers"):
        HeadConfig(layers=0)


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """A pretraining run folder as tools/pretrain.py leaves it (without the
    SavedModel): random weights, so copies are recognisable."""
    from nstudent import export, models
    from nstudent.models import HeadConfig, build_pretrain_network

    path = tmp_path_factory.mktemp("pretrain")
    config = models.ModelConfig(**TINY)
    network = build_pretrain_network(config, HeadConfig(3, 16))
    rng = np.random.default_rng(0)
    network.set_weights([rng.normal(size=w.shape).astype("float32") + 1.0
                         for w in network.get_weights()])
    export.save_keras(network, str(path / "model.keras"))
    export.write_json(str(path / export.MODEL_INFO), {
        "kind": export.PRETRAIN, "model": config.to_dict(), "head": {"layers": 3, "dim": 16}})
    export.write_json(str(path / export.METRICS), {"stage": "pretrain"})
    return str(path), network


@pytest.mark.parametrize("selector", [0, 1, 3])
def test_finetuning_from_selector_k_keeps_exactly_those_weights(pretrain_run, selector):
    from nstudent import models
    from nstudent.training import apply_pretrained, finetune_config, pretrained_weights

    path, pretrained = pretrain_run
    config = finetune_config(path, models.ModelConfig(**dict(TINY, num_classes=7)), selector)
    assert len(config.head_units) == selector
    assert config.head_linear_last == (selector == 3)
    network = models.build_efficientnet(config)
    copied = apply_pretrained(network, pretrained_weights(path), path)
    heads = sorted({l.name.rsplit("_", 1)[1] for l in network.layers
                    if l.name.startswith("head_")})
    assert heads == [str(k) for k in range(1, selector + 1)]  # exactly the first K
    assert "logits" not in copied and network.get_layer("logits").units == 7
    encoder = [l.name for l in pretrained.layers if l.weights and not l.name.startswith(
        "head_")]
    assert set(encoder) <= set(copied)
    for name in copied:
        for mine, theirs in zip(network.get_layer(name).get_weights(),
                                pretrained.get_layer(name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    relu = [l.name for l in network.layers if l.name.startswith("head_relu_")]
    assert len(relu) == (selector if selector < 3 else 2)
    # the classifier on top is new: its input is the K-th head layer's output (or pooling)
    source = network.get_layer("top_dropout").input._keras_history[0].name
    assert source == ("avg_pool" if selector == 0 else
                      f"head_relu_{selector}" if selector < 3 else "head_bn_3")


def test_finetuning_bad_input_names_the_problem(pretrain_run, tmp_path):
    from nstudent import models
    from nstudent.training import finetune_config

    path, _ = pretrain_run
    config = models.ModelConfig(**TINY)
    with pytest.raises(ValueError, match=r"--ft_proj_selector=4, but the projection head "
                                         r".* has 3 layers"):
        finetune_config(path, config, 4)
    with pytest.raises(ValueError, match="not a finished pretraining run"):
        finetune_config(str(tmp_path), config, 1)
    with pytest.raises(ValueError, match="width_scale 0.25 \\(pretrained\\) vs 0.5"):
        finetune_config(path, config.replace(width_scale=0.5), 1)


def test_distillation_loss_matches_a_hand_computed_value():
    from nstudent.training.steps import NoisyStudent, distillation_loss

    t = 2.0
    teacher = [math.exp(2 / t), math.exp(1 / t), math.exp(0 / t)]  # logits 2, 1, 0
    p = [v / sum(teacher) for v in teacher]
    student = [0.0, 1.0, 3.0]
    log_z = math.log(sum(math.exp(s / t) for s in student))
    want = t * t * -sum(pi * (s / t - log_z) for pi, s in zip(p, student))
    got = distillation_loss(np.array([p], "float32"), np.array([student], "float32"), t)
    assert float(got[0]) == pytest.approx(want, rel=1e-5)
    # on paper: p = (.50648, .30719, .18632), log q = (-1.96437, -1.46437, -0.46437)
    assert want == pytest.approx(4.0 * 1.53128, abs=1e-3)

    # as the student's loss: the pseudo part only when the labeled weight is 0
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    model = NoisyStudent(net, distill_temperature=t, labeled_loss_weight=0.0)
    logits = np.array([[5.0, 0, 0], student], "float32")
    y = np.array([[0, 1, 0]], "float32")
    total, (_, labeled, pseudo) = model.step_losses(logits, ((None, y), (None, [p])))
    assert float(labeled) > 1.0 and float(total) == pytest.approx(want, rel=1e-5)


def test_distillation_needs_pseudo_labels_at_its_temperature():
    from nstudent.training.student import check_distillation

    check_distillation(2.0, 0.0, {"hard": False, "temperature": 2.0})
    with pytest.raises(ValueError, match="Label again with --temperature=2.0"):
        check_distillation(2.0, 1.0, {"hard": False, "temperature": 1.0})
    with pytest.raises(ValueError, match="these are hard"):
        check_distillation(2.0, 1.0, {"hard": True, "temperature": 2.0})
    with pytest.raises(ValueError, match="--distill_temperature"):
        check_distillation(-1.0, 1.0)


def test_lars_update_matches_its_formula():
    from nstudent.training.lars import LARS
    from nstudent.training.optim import optimizer_for
    from nstudent.training.supervised import TrainConfig

    rng = np.random.default_rng(0)
    kernel = keras.Variable(rng.normal(size=(3, 2)).astype("float32"))
    bias = keras.Variable(rng.normal(size=(2,)).astype("float32"))
    lr, decay, eeta, momentum = 0.5, 0.01, 0.001, 0.9
    # what the stages use: biases and batch norm excluded from decay and the ratio
    staged = optimizer_for(TrainConfig(optimizer="lars", weight_decay=0.0), 5,
                           [kernel, bias])
    assert isinstance(staged, LARS)
    assert staged._use_weight_decay(kernel) and not staged._use_weight_decay(bias)
    optimizer = LARS(lr, momentum=momentum, weight_decay=decay, eeta=eeta)  # constant lr
    optimizer.exclude_from_weight_decay(var_list=[bias])
    w, b = kernel.numpy().astype(np.float64), bias.numpy().astype(np.float64)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for step in range(2):
        gw, gb = rng.normal(size=w.shape), rng.normal(size=b.shape)
        optimizer.apply([gw.astype("float32"), gb.astype("float32")], [kernel, bias])
        g = gw + decay * w  # kernel: decay, then the layer-wise trust ratio
        ratio = eeta * np.linalg.norm(w) / np.linalg.norm(g)
        vw = momentum * vw + lr * ratio * g
        w = w - vw
        vb = momentum * vb + lr * gb  # bias: plain momentum
        b = b - vb
        np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(bias.numpy(), b, rtol=1e-5, atol=1e-7)
    assert np.abs(w - b[None]).max() > 0 and ratio < 0.01  # the ratio really shrank it


def test_knn_vote_by_hand():
    from nstudent.pretraining import knn_accuracy, knn_predict

    bank = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], "float32")
    labels = np.array([0, 0, 1, 1, 2])
    queries = np.array([[1, 0.05], [0.05, 1], [-1, 0.1]], "float32")
    np.testing.assert_array_equal(knn_predict(bank, labels, queries, 3, k=1), [0, 1, 2])
    # k=3: query 3's neighbours are class 2 (sim ~1) and two far ones; the near vote wins
    np.testing.assert_array_equal(knn_predict(bank, labels, queries, 3, k=3), [0, 1, 2])
    assert knn_accuracy(bank, labels, queries, [0, 1, 1], 3, k=1) == pytest.approx(2 / 3)


@pytest.mark.parametrize("channels, blur", [(3, True), (1, False)])
def test_views_are_random_crops_and_colours_of_the_same_image(channels, blur):
    from nstudent.augment import ContrastiveViews

    images = random_images(4, 24, channels, seed=3)
    views = ContrastiveViews(jitter_strength=1.0, blur=blur, seed=0)
    first = keras.ops.convert_to_numpy(views(images, training=True))
    second = keras.ops.convert_to_numpy(views(images, training=True))
    assert first.shape == images.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 255
    assert np.abs(first - second).mean() > 1.0  # every call draws a new view
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(
        views(images, training=False)), images.astype("float32"))


def test_contrastive_batch_needs_two_images_per_replica():
    from nstudent.pretraining import check_batch

    check_batch(4, 2)
    for batch, replicas in ((1, 1), (3, 2), (2, 2)):
        with pytest.raises(ValueError, match="at least 2 images per replica"):
            check_batch(batch, replicas)


@pytest.mark.parametrize("args, message", [
    (["--contrastive_temperature=0"], "--contrastive_temperature must be positive"),
    (["--pretrain_batch_size=1"], "needs at least 2 images per replica"),
    (["--proj_head_layers=0"], "--proj_head_layers must be at least 1"),
])
def test_pretrain_tool_bad_flags(args, message):
    result = run_tool("pretrain.py", "--dataset=folder:/no/such", *args, "--out=/tmp/never")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_train_tool_refuses_what_is_not_a_pretraining_run(pretrain_run, tmp_path):
    path, _ = pretrain_run
    for run, selector, message in ((str(tmp_path), 1, "is not a finished pretraining run"),
                                   (path, 5, "--ft_proj_selector=5, but the projection")):
        result = run_tool("train.py", "--dataset=folder:/no/such", f"--init_from_pretrained={run}",
                          f"--ft_proj_selector={selector}", "--out=/tmp/never")
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr


def test_pipeline_pretrains_finetunes_and_distils_and_resumes(toy_folder, tmp_path):
    """--pretrain: pretrain -> gen0 fine-tuned from head layer 1 -> pseudo-labels at
    T=2 -> a distilled student. Killed inside pretraining, the same command resumes at
    the backed-up step; the encoder's SavedModel serves its embeddings."""
    out = str(tmp_path / "run")
    args = [f"--dataset=folder:{toy_folder}", "--channels=1", "--labels_per_class=8",
            "--model=b0", "--width_scale=0.25", "--depth_scale=0.25", "--image_size=16",
            "--batch_size=8", "--epochs=1", "--randaugment_magnitude=5",
            "--min_confidence=0", "--generations=1", "--pretrain", "--pretrain_epochs=1",
            "--pretrain_batch_size=16", "--proj_dim=16", "--ft_proj_selector=1",
            "--backup_every_steps=3", "--init_from_teacher", "--temperature=2",
            "--distill_temperature=2", "--labeled_loss_weight=0", f"--out={out}"]
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "pipeline.py"),
                             *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    backup = os.path.join(out, "pretrain", "backup", "backup.json")
    deadline = time.time() + 600
    while not os.path.exists(backup) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.exists(backup), "pretraining finished before it could be killed"
    assert not os.path.exists(os.path.join(out, "pretrain", "metrics.json"))

    result = run_tool("pipeline.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming from the backup" in result.stderr
    steps = json.load(open(os.path.join(out, "manifest.json")))["steps"]
    assert set(steps) == {"pretrain", "gen0", "pseudo_labels_for_gen1", "gen1"}
    assert steps["pretrain"]["finished_at"] <= steps["gen0"]["finished_at"]
    pre = json.load(open(os.path.join(out, "pretrain", "metrics.json")))
    assert pre["stage"] == "pretrain" and pre["views_per_image"] == 2
    assert pre["resumed_from_epoch"] is not None and pre["resumed_from_step"] is not None
    assert pre["optimizer_iterations"] == 160 // 16  # as an uninterrupted run
    assert pre["knn_bank"] == 32 and pre["test_examples"] == 24
    for key in ("knn_top1", "linear_eval_top1"):  # a count of the 24 test images
        hits = pre[key] * 24
        assert abs(hits - round(hits)) < 1e-6 and 0 <= round(hits) <= 24, (key, pre[key])
    assert pre["train_images_per_second"] > 0 and pre["train"]["optimizer"] == "lars"
    assert not os.path.exists(os.path.join(out, "pretrain", "backup"))
    assert "Pretrained encoder (pretrain/): kNN top-1" in result.stderr
    gen0 = json.load(open(os.path.join(out, "gen0", "metrics.json")))
    assert gen0["init_from_pretrained"] == os.path.join(out, "pretrain")
    assert gen0["ft_proj_selector"] == 1 and len(gen0["model"]["head_units"]) == 1
    gen1 = json.load(open(os.path.join(out, "gen1", "metrics.json")))
    assert gen1["distill_temperature"] == 2 and gen1["labeled_loss_weight"] == 0
    assert gen1["model"]["head_units"] == gen0["model"]["head_units"]  # from the teacher

    # the encoder's export: serving_default on uint8 gives model.keras's embeddings
    import tensorflow as tf

    images = random_images(5, 16, 1, seed=9)
    served = tf.saved_model.load(os.path.join(out, "pretrain", "saved_model")).signatures[
        "serving_default"](images=tf.constant(images))
    network = keras.saving.load_model(os.path.join(out, "pretrain", "model.keras"))
    want = network.predict_on_batch(images.astype("float32"))
    for key in ("embeddings", "projections"):
        np.testing.assert_allclose(served[key].numpy(), want[key], rtol=1e-4, atol=1e-4)


def test_pretraining_synchronises_batch_norm_on_several_tensorflow_replicas(caplog):
    """SimCLR needs global batch norm: on 2+ TF replicas pretraining turns it on (and
    says so) without --sync_batchnorm; one device and JAX (strategy None) keep theirs."""
    import logging

    from nstudent.pretraining.stage import pretraining_placement
    from nstudent.training.distribute import Placement

    mirrored = Placement("data_parallel", replicas=2, strategy=object())
    with caplog.at_level(logging.INFO, logger="absl"):
        placed = pretraining_placement(mirrored)
    assert placed.sync_batchnorm and placed.report()["sync_batchnorm"] is True
    assert "synchronised over the global batch" in caplog.text
    for other in (Placement(), Placement("data_parallel", replicas=2),  # JAX: no strategy
                  Placement("none", replicas=1, strategy=object())):
        assert pretraining_placement(other) is other
