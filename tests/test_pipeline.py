"""tools/pipeline.py end to end: generations, resume after a kill, the report."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_image_folder
from test_tools import BACKENDS, ROOT, run_tool

CLASSES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_image_folder(root, "train", CLASSES, per_class=40, channels=1, size=16,
                       learnable=True)
    write_image_folder(root, "test", CLASSES, per_class=6, channels=1, size=16,
                       learnable=True)
    return root


def _flags(folder, out, generations=2):
    return [f"--dataset=folder:{folder}", "--channels=1", "--labels_per_class=8",
            "--model=b0", "--width_scale=0.25", "--depth_scale=0.25", "--image_size=16",
            "--batch_size=8", "--epochs=2", "--randaugment_magnitude=5",
            "--min_confidence=0", f"--generations={generations}", f"--out={out}"]


def _steps(out):
    path = os.path.join(out, "manifest.json")
    try:
        return set(json.load(open(path))["steps"])
    except (OSError, ValueError):
        return set()


def test_pipeline_resumes_after_a_kill_between_generations(toy_folder, tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "pipeline.py"),
                             *_flags(toy_folder, out)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while "gen1" not in _steps(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _steps(out) == {"gen0", "pseudo_labels_for_gen1", "gen1"}, "killed too late"
    assert not os.path.exists(os.path.join(out, "gen2", "metrics.json"))
    finished = {g: os.stat(os.path.join(out, g, "metrics.json")).st_mtime_ns
                for g in ("gen0", "gen1")}

    # other settings must not resume into this folder
    changed = run_tool("pipeline.py", *_flags(toy_folder, out), "--unlabeled_ratio=2")
    assert changed.returncode == 2 and "unlabeled_ratio" in changed.stderr

    result = run_tool("pipeline.py", *_flags(toy_folder, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gen0: finished earlier; skipped" in result.stderr
    assert "gen1: finished earlier; skipped" in result.stderr
    for g, mtime in finished.items():  # not redone
        assert os.stat(os.path.join(out, g, "metrics.json")).st_mtime_ns == mtime
    assert _steps(out) == {"gen0", "pseudo_labels_for_gen1", "gen1",
                           "pseudo_labels_for_gen2", "gen2"}
    for g in ("gen0", "gen1", "gen2"):
        for name in ("saved_model/saved_model.pb", "model.keras", "metrics.json"):
            assert os.path.exists(os.path.join(out, g, name)), (g, name)
    assert "| 2 | student |" in result.stdout and "teacher (gen0) test top-1" in result.stdout
    with open(os.path.join(out, "accuracy.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(out) if ".tmp-" in f]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pseudo_label_and_student_tools(toy_folder, tmp_path, backend):
    """The stage binaries one by one; the student's step compiles under both backends."""
    flags = _flags(toy_folder, "unused")[:-2]
    teacher, labels, student = (str(tmp_path / n) for n in ("t", "pl", "s"))
    result = run_tool("train.py", *flags, f"--out={teacher}", backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_tool("pseudo_label.py", *flags, f"--teacher={teacher}", f"--out={labels}",
                      "--num_shards=2", "--shard_index=1", backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_tool("train.py", *flags, f"--pseudo_labels={labels}", f"--out={student}",
                      backend=backend)
    assert result.returncode == 2 and "Shard 0 of 2" in result.stderr  # not labeled yet
    assert not os.path.exists(student)
    result = run_tool("pseudo_label.py", *flags, f"--teacher={teacher}", f"--out={labels}",
                      "--num_shards=2", backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Shard 1 of 2 is already complete; skipped" in result.stderr
    result = run_tool("train.py", *flags, f"--pseudo_labels={labels}", f"--out={student}",
                      backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(student, "metrics.json")))
    assert metrics["stage"] == "student" and metrics["versions"]["backend"] == backend
    assert metrics["jit_compile"] == (backend == "jax")
    assert metrics["last_epoch"]["pseudo_loss"] > 0 < metrics["last_epoch"]["labeled_loss"]


def test_pseudo_label_bad_input(toy_folder, tmp_path):
    flags = _flags(toy_folder, "unused")[:-2]
    result = run_tool("pseudo_label.py", *flags, "--teacher=/no/such/run",
                      f"--out={tmp_path}/pl")
    assert result.returncode == 2 and "No model at '/no/such/run'" in result.stderr
    result = run_tool("train.py", *flags, f"--pseudo_labels={tmp_path}/none",
                      f"--out={tmp_path}/s")
    assert result.returncode == 2 and "No pseudo-label folder" in result.stderr
