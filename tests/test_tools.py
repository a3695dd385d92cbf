"""The absl binaries end to end, under the TensorFlow and the JAX backend."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = [
    "--dataset=fashion_mnist", "--labels_per_class=8", "--model=b0",
    "--width_scale=0.25", "--depth_scale=0.25", "--image_size=16", "--batch_size=16",
    "--epochs=2", "--steps_per_epoch=3", "--randaugment_magnitude=5",
]
needs_fmnist = pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian's dataset-fashion-mnist is not installed")


def run_tool(name, *args, backend="tensorflow"):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)


BACKENDS = [
    "tensorflow",
    pytest.param("jax", marks=pytest.mark.skipif(
        importlib.util.find_spec("jax") is None, reason="jax is not installed")),
]


@needs_fmnist
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_exports_and_evaluate_agrees(tmp_path, backend):
    out = str(tmp_path / "teacher")
    result = run_tool("train.py", *TINY_FLAGS, f"--out={out}", backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.keras", "saved_model/saved_model.pb", "model_info.json",
                 "metrics.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert os.listdir(os.path.join(out, "logs"))  # TensorBoard
    assert not [f for f in os.listdir(out) if ".tmp-" in f]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["labeled_examples"] == 80 and metrics["unlabeled_examples"] == 59920
    assert metrics["versions"]["backend"] == backend
    assert metrics["seconds_per_epoch"] > 0 and metrics["train_images_per_second"] > 0
    # The training step must really be compiled: XLA on JAX, a graph on TF-CPU.
    assert metrics["jit_compile"] == (backend == "jax")
    # --randaugment_impl=auto resolves (no accelerator here: host KerasCV) and is recorded
    assert metrics["input"]["randaugment_impl"] == "keras_cv"

    for prefer in ("saved_model", "keras"):
        result = run_tool("evaluate.py", f"--model={out}", f"--prefer={prefer}",
                          f"--output={tmp_path}/eval.json", backend=backend)
        assert result.returncode == 0, result.stderr[-3000:]
        evaluated = json.load(open(tmp_path / "eval.json"))
        assert evaluated["examples"] == 10000
        assert evaluated["top1"] == pytest.approx(metrics["test_top1"], abs=2e-3)
        assert evaluated["top5"] == pytest.approx(metrics["test_top5"], abs=2e-3)

    # robustness: corruptions (backend-independent inputs: TF only) and FGSM (gradients
    # through the model on this backend)
    corruptions = (["--corruptions=gaussian_noise,contrast", "--severities=1,5"]
                   if backend == "tensorflow" else [])
    result = run_tool("evaluate.py", f"--model={out}", *corruptions,
                      "--fgsm_epsilons=0,8/255", "--examples=200",
                      f"--output={tmp_path}/robust.json", backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.load(open(tmp_path / "robust.json"))
    assert report["examples"] == 200
    if backend == "tensorflow":
        assert set(report["corruptions"]) == {"gaussian_noise", "contrast"}
        assert set(report["corruptions"]["contrast"]) == {"1", "5"}
        assert "mean corruption top-1" in result.stdout
    assert report["fgsm"]["0"] == pytest.approx(report["clean_top1"], abs=1e-6)
    assert report["fgsm"]["0.0313725"] <= report["clean_top1"]


@needs_fmnist
def test_finished_run_is_not_redone(tmp_path):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    result = run_tool("train.py", *TINY_FLAGS, f"--out={out}")
    assert result.returncode == 0
    assert "already holds a finished run" in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--dataset=mnist_v9", "Unknown dataset 'mnist_v9'"),
    ("--dataset=folder:/no/such/folder", "does not exist"),
    ("--labels_per_class=7000", "class 0 has only 6000"),
])
def test_train_bad_input_gives_one_clear_error(tmp_path, flag, message):
    if "labels_per_class" in flag and not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("needs Fashion-MNIST")
    result = run_tool("train.py", *TINY_FLAGS, flag, f"--out={tmp_path}/x")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "x" / "model.keras")


@pytest.mark.parametrize("tool, args, message", [
    ("evaluate.py", ["--model=/no/run", "--corruptions=all"], "No model at '/no/run'"),
    ("finetune.py", ["--run=/no/run", "--finetune_resolution=64"], "No model at '/no/run'"),
    ("finetune.py", ["--run=/no/run"], "Pass --finetune_resolution"),
    ("pipeline.py", ["--out=/tmp/never", "--corruptions=fog"], "--corruptions: unknown fog"),
    ("pipeline.py", ["--out=/tmp/never", "--finetune_resolution=16"], "below the models' "
     "minimum of 32"),
    ("pipeline.py", ["--out=/tmp/never", "--finetune_resolution=64", "--freeze_blocks=99"],
     "--freeze_blocks=99, but the models have"),
    ("pipeline.py", ["--out=/tmp/never", "--fgsm_epsilons=two"], "Cannot read FGSM epsilon"),
])
def test_stage_tools_bad_input(tool, args, message):
    needs_data = tool != "finetune.py" and "/no/run" not in args[0]
    if needs_data and not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("needs Fashion-MNIST")
    result = run_tool(tool, *TINY_FLAGS[:1], *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists("/tmp/never")
