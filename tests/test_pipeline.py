"""tools/pipeline.py end to end: generations, resume after a kill, the report."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TOY_CLASSES as CLASSES
from test_tools import BACKENDS, ROOT, run_tool


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
    _check_gen2_learned_from_gen1(out)
    with open(os.path.join(out, "accuracy.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(out) if ".tmp-" in f]


def _check_gen2_learned_from_gen1(out):
    """gen2's pseudo-labels were made by gen1 (recorded, and each label is gen1's
    softmax for that very image, not gen0's), and gen2 trained on them."""
    import numpy as np

    from nstudent.data.decode import decode
    from nstudent.data.pipeline import preprocess_eval
    from nstudent.evaluation import load_classifier
    from nstudent.pseudo_labels import read_records, soften

    labels = os.path.join(out, "pseudo_labels_for_gen2")
    stats = json.load(open(os.path.join(labels, "stats.json")))
    assert stats["settings"]["teacher"] == os.path.join(out, "gen1")
    student = json.load(open(os.path.join(out, "gen2", "metrics.json")))
    assert student["pseudo_labels"] == labels
    assert student["teacher"] == os.path.join(out, "gen1")
    records = read_records(labels)[:32]
    images = np.stack([np.asarray(preprocess_eval(decode(r["image"], 1), 16))
                       for r in records]).astype(np.float32)
    stored = np.stack([r["label"] for r in records])
    gen0, gen1 = (load_classifier(os.path.join(out, g), prefer="keras") for g in
                  ("gen0", "gen1"))
    np.testing.assert_allclose(stored, soften(gen1.logits(images)), atol=1e-4)
    assert np.abs(stored - soften(gen0.logits(images))).max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_pseudo_label_and_student_tools(toy_folder, tmp_path, backend):
    """The stage binaries one by one; the student's step compiles under both backends."""
    flags = _flags(toy_folder, "unused")[:-2]
    teacher, labels, student = (str(tmp_path / n) for n in ("t", "pl", "s"))
    result = run_tool("train.py", *flags, f"--out={teacher}", "--train_steps=7",
                      backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(teacher, "metrics.json")))
    assert metrics["optimizer_iterations"] == 7  # the step budget, not --epochs=2
    assert metrics["epochs"] * metrics["steps_per_epoch"] == 7
    if backend == "tensorflow":  # the shard bookkeeping: backend-independent
        result = run_tool("pseudo_label.py", *flags, f"--teacher={teacher}",
                          f"--out={labels}", "--num_shards=2", "--shard_index=1")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Shards still to label: 0 of 2" in result.stderr
        result = run_tool("train.py", *flags, f"--pseudo_labels={labels}",
                          f"--out={student}")
        assert result.returncode == 2 and "stats.json is missing" in result.stderr
        assert not os.path.exists(student)  # not yet
        result = run_tool("pseudo_label.py", *flags, f"--teacher={teacher}",
                          f"--out={labels}", "--num_shards=2", "--phase=select")
        assert result.returncode == 2 and "shard 0 (not started)" in result.stderr
    result = run_tool("pseudo_label.py", *flags, f"--teacher={teacher}", f"--out={labels}",
                      "--num_shards=2", backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    if backend == "tensorflow":
        assert "Shard 1 of 2 is already labeled; skipped" in result.stderr
    assert "| class | predicted | above threshold |" in result.stderr
    result = run_tool("train.py", *flags, f"--pseudo_labels={labels}", f"--out={student}",
                      "--train_steps=7", "--student_steps=5", backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(student, "metrics.json")))
    assert metrics["optimizer_iterations"] == 5  # the students' budget, not the teacher's
    assert metrics["stage"] == "student" and metrics["versions"]["backend"] == backend
    assert metrics["jit_compile"] == (backend == "jax")
    assert metrics["last_epoch"]["pseudo_loss"] > 0 < metrics["last_epoch"]["labeled_loss"]


def test_students_own_budget_and_larger_generations(toy_folder, tmp_path):
    """--student_steps is every student's exact step count (the teacher keeps
    --epochs); --width_scales and --depth_scales size each generation."""
    out = str(tmp_path / "run")
    result = run_tool("pipeline.py", *_flags(toy_folder, out, generations=2),
                      "--student_steps=3", "--width_scales=0.25,0.5",
                      "--depth_scales=0.25,0.25,0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    gens = [json.load(open(os.path.join(out, f"gen{g}", "metrics.json"))) for g in range(3)]
    assert [m["model"]["width_scale"] for m in gens] == [0.25, 0.5, 0.5]
    assert [m["model"]["depth_scale"] for m in gens] == [0.25, 0.25, 0.5]
    assert gens[0]["parameters"] < gens[1]["parameters"] < gens[2]["parameters"]
    assert gens[0]["epochs"] == 2 and gens[0]["optimizer_iterations"] == 2 * gens[0][
        "steps_per_epoch"]
    assert [m["optimizer_iterations"] for m in gens[1:]] == [3, 3]
    result = run_tool("pipeline.py", *_flags(toy_folder, str(tmp_path / "r2")),
                      "--width_scales=0.25,0.5", "--init_from_teacher")
    assert result.returncode == 2 and "teacher's architecture" in result.stderr


def test_pseudo_label_bad_input(toy_folder, tmp_path):
    flags = _flags(toy_folder, "unused")[:-2]
    result = run_tool("pseudo_label.py", *flags, "--teacher=/no/such/run",
                      f"--out={tmp_path}/pl")
    assert result.returncode == 2 and "no model at '/no/such/run'" in result.stderr
    result = run_tool("pseudo_label.py", *flags, "--teacher=/no/such/run",
                      f"--out={tmp_path}/pl", "--num_shards=4", "--shard_index=4")
    assert result.returncode == 2 and "--shard_index=4 is outside [0, 4)" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "pl")
    result = run_tool("train.py", *flags, f"--pseudo_labels={tmp_path}/none",
                      f"--out={tmp_path}/s")
    assert result.returncode == 2 and "No pseudo-label folder" in result.stderr


def _write_unlabeled_pngs(root, n, size=16, seed=0):
    import numpy as np
    import tensorflow as tf

    root.mkdir()
    pixels = np.random.default_rng(seed).integers(0, 256, (n, size, size, 1), np.uint8)
    for i in range(n):
        (root / f"{i:05d}.png").write_bytes(tf.io.encode_png(pixels[i]).numpy())


def test_labeling_killed_mid_shard_resumes_at_its_last_chunk(toy_folder, tmp_path):
    """SIGKILL during labeling; the same command resumes at the first missing chunk
    and ends with exactly the records of an uninterrupted run."""
    import numpy as np

    from conftest import BATCHING, TINY
    from nstudent import data, export, models
    from nstudent.pseudo_labels import read_records

    config = models.ModelConfig(**TINY)
    model = models.build_efficientnet(config)
    teacher = str(tmp_path / "teacher")
    export.write_run(teacher, model, config, data.DatasetInfo("toy", 4, 1, CLASSES), {})
    _write_unlabeled_pngs(tmp_path / "unlabeled", 6000)
    flags = [f"--dataset=folder:{toy_folder}", f"--unlabeled_dataset=folder:{tmp_path}/"
             "unlabeled", "--channels=1", f"--teacher={teacher}", "--min_confidence=0",
             "--label_chunk_size=100", "--label_batch_size=20"]
    killed = str(tmp_path / "killed")
    chunks = os.path.join(killed, "labels", "shard-00000-of-00001")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "pseudo_label.py"),
                             *flags, f"--out={killed}"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finished():
        return sorted(f for f in os.listdir(chunks) if f.endswith(".npz")) if os.path.isdir(
            chunks) else []

    deadline = time.time() + 300
    while len(finished()) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {f: os.stat(os.path.join(chunks, f)).st_mtime_ns for f in finished()}
    assert 3 <= len(before) < 60, f"killed after {len(before)} of 60 chunks"
    assert not os.path.exists(os.path.join(killed, "stats.json"))

    result = run_tool("pseudo_label.py", *flags, f"--out={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming at chunk {len(before) + 1} of 60" in result.stderr
    assert {f: os.stat(os.path.join(chunks, f)).st_mtime_ns for f in before} == before
    result = run_tool("pseudo_label.py", *flags, f"--out={tmp_path}/whole")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = read_records(killed), read_records(str(tmp_path / "whole"))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):  # same records in the same seeded order
        assert (x["index"], x["copies"], x["image"]) == (y["index"], y["copies"], y["image"])
        # the resumed chunks are batched otherwise than the whole run's: BATCHING
        np.testing.assert_allclose(x["label"], y["label"], **BATCHING)
