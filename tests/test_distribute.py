"""Several devices and machines, resuming a killed stage, and the training knobs
(moving average, gradient accumulation, weight decay, label smoothing, validation)."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from test_tools import BACKENDS, ROOT, TINY_FLAGS, needs_fmnist, run_tool


def _python(script, backend, env=None, timeout=600):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, script], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


# -- several devices -----------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_replicas_take_the_step_one_replica_takes(backend):
    """2 logical CPUs (TF) / 2 host devices (JAX) vs 1, same global batch, noise off:
    one supervised and one noisy-student step give the same weights."""
    result = _python(os.path.join(ROOT, "tests", "replica_check.py"), backend)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["replicas"] == 2
    for step in ("supervised", "student", "multilabel_student"):
        assert figures[step] < 2e-5 * max(1.0, figures[step + "_scale"]) * 10, figures
    if backend == "tensorflow":
        # without --sync_batchnorm each replica normalises by its own half-batch: the
        # comparison would fail, so the split above is real
        assert figures["supervised_per_replica_bn"] > 1e-2
        assert figures["student_per_replica_bn"] > 1e-2


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@needs_fmnist
def test_two_workers_on_one_machine_leave_one_export(tmp_path):
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    out = tmp_path / "teacher"
    workers = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": {"worker": hosts},
                                         "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tools", "train.py"), *TINY_FLAGS,
             f"--out={out}", "--bn_recalibration_batches=2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    exports = [root for root, _, files in os.walk(tmp_path) if "metrics.json" in files]
    assert exports == [str(out)]
    assert sorted(os.listdir(out)) == ["confusion.png", "curves.png", "logs", "metrics.json",
                                       "model.keras", "model_info.json", "reliability.png",
                                       "saved_model"]
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["distribution"] == "multi_worker"
    assert metrics["workers"] == 2 and metrics["replicas"] == 2
    assert "worker 1 writes nothing" in outputs[1][1]
    # the test score is the whole test split's, not one worker's share
    result = run_tool("evaluate.py", f"--model={out}", f"--output={tmp_path}/eval.json")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.load(open(tmp_path / "eval.json"))
    assert evaluated["top1"] == pytest.approx(metrics["test_top1"], abs=2e-3)


# -- resuming ------------------------------------------------------------------------
RESUME_FLAGS = [f for f in TINY_FLAGS if not f.startswith(("--epochs", "--steps_per"))] + [
    "--epochs=4", "--steps_per_epoch=12", "--backup_every_steps=3",
    "--bn_recalibration_batches=2"]


def _backup_state(out):
    try:
        return json.load(open(os.path.join(out, "backup", "backup.json")))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@needs_fmnist
def test_killed_teacher_resumes_where_its_backup_was(tmp_path):
    out = str(tmp_path / "teacher")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.join(ROOT, "tools", "train.py"), *RESUME_FLAGS,
               f"--out={out}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, cwd=ROOT)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        state = _backup_state(out)
        if state and state["epoch"] == 2 and state["step"] >= 3:  # inside epoch 3 of 4
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = _backup_state(out)
    assert state and state["epoch"] == 2 and 3 <= state["step"] < 12, state
    assert not os.path.exists(os.path.join(out, "metrics.json"))

    # another configuration is refused and the backup stays
    other = run_tool("train.py", *RESUME_FLAGS, f"--out={out}", "--learning_rate=0.5")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert f"remove {out}/backup" in other.stderr and "learning_rate" in other.stderr
    assert _backup_state(out) == state

    # the same command resumes; validation settings do not change the training state
    result = run_tool("train.py", *RESUME_FLAGS, f"--out={out}", "--eval_every_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr + result.stdout
    assert f"2 epoch(s) and {state['step']} step(s) done" in log
    assert "Epoch 1/4" not in log and "Epoch 2/4" not in log and "Epoch 4/4" in log
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["resumed_from_epoch"] == 2 and metrics["resumed_from_step"] == state["step"]
    assert metrics["epochs_trained_here"] == 2
    # an uninterrupted run takes 4 x 12 optimizer steps; so did this one, in all
    assert metrics["optimizer_iterations"] == 48
    assert len(metrics["validation"]["val_top1"]) == 2  # epochs 3 and 4
    assert os.listdir(os.path.join(out, "logs", "validation"))
    assert not os.path.exists(os.path.join(out, "backup"))  # exports complete: removed


# -- training knobs ------------------------------------------------------------------
def test_exported_weights_are_the_hand_computed_moving_average(tmp_path, monkeypatch):
    """Three SGD steps with --ema_decay=0.5: the export holds a3, where a1 = w1,
    a_t = 0.5 a_{t-1} + 0.5 w_t over the weights w_t after each step."""
    from conftest import toy_dataset

    from nstudent import data, training
    from nstudent.evaluation import load_classifier
    from nstudent.models import ModelConfig
    from nstudent.training import supervised

    steps = []

    class Recorder(supervised.EpochTimer):
        def on_train_batch_end(self, batch, logs=None):
            steps.append([w.numpy().copy() if hasattr(w, "numpy") else np.array(w)
                          for w in self.model.trainable_weights])

    monkeypatch.setattr(supervised, "EpochTimer", Recorder)
    info, splits = toy_dataset(tmp_path / "d", 8, 2)
    stage_data = data.StageData(info, splits["train"], splits["test"])
    config = ModelConfig(variant="b0", num_classes=4, channels=1, image_size=16,
                         width_scale=0.25, depth_scale=0.25, dropout=0.0,
                         stochastic_depth=0.0)
    input_config = data.InputConfig(image_size=16, batch_size=8, randaugment_layers=0,
                                    random_flip=False)
    train = training.TrainConfig(epochs=1, steps_per_epoch=3, optimizer="sgd",
                                 learning_rate=0.05, warmup_epochs=0, ema_decay=0.5,
                                 bn_recalibration_batches=1)
    out = str(tmp_path / "run")
    training.train_teacher(out, stage_data, config, input_config, train)
    assert len(steps) == 3
    average = steps[0]
    for weights in steps[1:]:
        average = [0.5 * a + 0.5 * w for a, w in zip(average, weights)]
    exported = load_classifier(out, prefer="keras").keras_model.trainable_weights
    for a, e in zip(average, exported):
        np.testing.assert_allclose(np.asarray(e), a, atol=1e-6)
    assert max(np.abs(a - w).max() for a, w in zip(average, steps[-1])) > 1e-4


def _dense_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                             keras.layers.Dense(3)])


def test_accumulating_k_batches_is_one_step_on_a_k_times_batch():
    from nstudent.training import TrainConfig
    from nstudent.training.optim import optimizer_for

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 6)).astype("float32"), rng.normal(size=(12, 3))
    weights = {}
    for k in (1, 3):
        model = _dense_model()
        config = TrainConfig(epochs=1, optimizer="sgd", learning_rate=0.1,
                             warmup_epochs=0, weight_decay=0.0, grad_accum_steps=k)
        # a schedule this long is flat over a few steps
        model.compile(optimizer=optimizer_for(config, 10**7, model.trainable_variables),
                      loss="mse")
        before = [w.copy() for w in model.get_weights()]
        model.fit(x, y, batch_size=12 // k, epochs=1, shuffle=False, verbose=0)
        weights[k] = model.get_weights()
        assert int(model.optimizer.iterations) == 1
        assert max(np.abs(a - b).max() for a, b in zip(before, weights[k])) > 1e-3
    for a, b in zip(weights[1], weights[3]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_weight_decay_spares_batch_norm_and_biases(tiny_model):
    from nstudent.training import TrainConfig
    from nstudent.training.optim import optimizer_for

    config = TrainConfig(optimizer="sgd", learning_rate=1.0, warmup_epochs=0,
                         weight_decay=0.1)
    optimizer = optimizer_for(config, 10**7, tiny_model.trainable_variables)
    before = [v.numpy().copy() for v in tiny_model.trainable_variables]
    zero = [keras.ops.zeros_like(v) for v in tiny_model.trainable_variables]
    optimizer.apply(zero, tiny_model.trainable_variables)
    kinds = set()
    for v, old in zip(tiny_model.trainable_variables, before):
        if len(v.shape) >= 2:
            np.testing.assert_allclose(v.numpy(), old * 0.9, rtol=1e-5, atol=1e-7)
            kinds.add("kernel")
        else:
            np.testing.assert_array_equal(v.numpy(), old)
            kinds.add(v.name)
    assert {"kernel", "gamma", "beta", "bias"} <= kinds


def test_label_smoothing_reaches_hard_pseudo_labels_only():
    from nstudent.training.steps import NoisyStudent

    logits = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(
        size=(4, 3)).astype("float32"))
    y = np.eye(3, dtype="float32")[[0, 2]]

    def cross_entropy(target, rows):
        p = keras.ops.convert_to_numpy(keras.ops.log_softmax(rows, axis=-1))
        return float(np.mean(-(target * p).sum(-1)))

    smoothed = y * 0.8 + 0.2 / 3
    for hard, pseudo_target in ((True, smoothed), (False, y)):
        student = NoisyStudent(_dense_model(), label_smoothing=0.2, hard_pseudo_labels=hard)
        _, (_, labeled, pseudo) = student.step_losses(logits, ((None, y), (None, y)))
        assert float(labeled) == pytest.approx(cross_entropy(smoothed, logits[:2]), 1e-5)
        assert float(pseudo) == pytest.approx(cross_entropy(pseudo_target, logits[2:]),
                                              1e-5)


def test_validation_split_is_carved_per_class_from_the_labeled_subset():
    from nstudent.data.subsets import carve_validation

    labels = np.repeat(np.arange(4), 10)
    labeled = np.arange(0, 40, 2)  # 5 per class
    train, held = carve_validation(labeled, labels, 0.2, seed=3)
    assert len(held) == 4 and sorted(labels[held]) == [0, 1, 2, 3]
    assert set(train) | set(held) == set(labeled) and not set(train) & set(held)
    np.testing.assert_array_equal(held, carve_validation(labeled, labels, 0.2, 3)[1])


# -- bad input -----------------------------------------------------------------------
@pytest.mark.parametrize("config, field", [
    ("{not json", "not valid JSON"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "TF_CONFIG['cluster']"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}}), "TF_CONFIG['task']"),
    (json.dumps({"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker",
                                                             "index": 0}}),
     "TF_CONFIG['cluster']['worker']"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker",
                                                               "index": 2}}),
     "TF_CONFIG['task']['index']"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "ps",
                                                               "index": 0}}),
     "TF_CONFIG['task']['type']"),
])
def test_malformed_tf_config_names_the_field(config, field):
    from nstudent.training import parse_tf_config

    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_tf_config(config)


def test_tf_config_gives_workers_and_chief():
    from nstudent.training import parse_tf_config

    cluster = {"worker": ["a:1", "b:2"]}
    assert parse_tf_config(json.dumps({"cluster": cluster, "task": {
        "type": "worker", "index": 1}})) == (2, 1, False)
    assert parse_tf_config(json.dumps({"cluster": {"chief": ["c:3"], **cluster}, "task": {
        "type": "chief", "index": 0}})) == (3, 0, True)
    assert parse_tf_config(json.dumps({"cluster": {"worker": ["a:1"]}, "task": {
        "type": "worker", "index": 0}})) is None


def test_bad_distribution_input_fails_fast_before_any_data(tmp_path):
    env_config = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "chief"}})
    for flags, env, message in (
            (["--grad_accum_steps=0"], {}, "--grad_accum_steps must be at least 1"),
            ([], {"TF_CONFIG": env_config}, "TF_CONFIG['task']['type']"),
            (["--ema_decay=1.0"], {}, "--ema_decay must be in [0, 1)")):
        start = time.time()
        result = _python_tool(["--dataset=folder:/nonexistent", f"--out={tmp_path}/x",
                               *flags], env)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and time.time() - start < 60
    assert not os.path.exists(tmp_path / "x")


def _python_tool(args, env):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", **env)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_data_parallel_on_one_device_warns_and_runs_on_one(caplog):
    from nstudent.training import distribute

    with caplog.at_level(logging.WARNING, logger="absl"):
        placement = distribute.configure_distribution("data_parallel")
    try:
        assert placement.replicas == 1 and placement.strategy is None
        assert "only one device" in caplog.text
    finally:
        distribute.set_current(distribute.Placement())
