"""One writer per --out (export/lock.py): a second live writer is refused by PID before
any work, a dead one's lock is taken over, and the lock goes with the stage."""

import json
import os
import socket
import subprocess
import sys

import pytest

from nstudent.export import lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_refuses_a_live_holder_takes_over_a_dead_one_and_is_released(tmp_path):
    out = str(tmp_path / "run")
    with lock.output_lock(out) as path:
        assert path == out + ".lock"
        holder = json.load(open(path))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(lock.OutputInUse, match=f"process {os.getpid()} on"):
            lock.acquire(out)
        assert lock.acquire(out, "shard1") == out + ".shard1.lock"  # another role
    assert not os.path.exists(out + ".lock")
    with open(out + ".lock", "w") as f:  # left by a killed run
        json.dump({"pid": _dead_pid(), "host": socket.gethostname()}, f)
    os.makedirs(tmp_path / "run" / ".saved_model.tmp-abc123")  # its half-written export
    os.makedirs(tmp_path / "run" / "logs")
    path = lock.acquire(out)
    assert json.load(open(path))["pid"] == os.getpid()
    assert sorted(os.listdir(tmp_path / "run")) == ["logs"]  # the dead one's temporary went
    lock.release(path)
    with open(out + ".lock", "w") as f:  # another machine's: cannot be checked, so held
        json.dump({"pid": 1, "host": "elsewhere"}, f)
    with pytest.raises(lock.OutputInUse, match="on elsewhere"):
        lock.acquire(out)


def test_a_second_tool_into_the_same_out_is_refused_with_the_holders_pid(tmp_path):
    """tools/train.py into an --out this process holds: one line, exit 2, the PID, and
    nothing written there."""
    out = str(tmp_path / "run")
    with lock.output_lock(out):
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "train.py"), f"--out={out}",
             "--dataset=fashion_mnist", "--epochs=1"], capture_output=True, text=True,
            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"is being written by process {os.getpid()}" in result.stderr
    assert [x for x in result.stderr.splitlines() if x.startswith("error:")] and \
        "Traceback" not in result.stderr
    assert not os.path.exists(out)


def test_a_failed_stage_leaves_no_folder_of_logs_alone(tmp_path):
    """run_stage: a stage that fails with only TensorBoard's logs/ in its new --out
    leaves no folder (a listing cannot take it for a run); one that leaves something to
    resume (a backup) keeps it; either way the lock is gone."""
    script = r"""
import os, sys
from absl import flags
from nstudent import cli
from nstudent.errors import InputError
flags.DEFINE_string("out", None, "")
flags.FLAGS(["x", "--out=" + sys.argv[1]])

def fails(keep):
    def stage():
        os.makedirs(os.path.join(sys.argv[1], "logs"))
        if keep:
            os.makedirs(os.path.join(sys.argv[1], "backup"))
        raise InputError("no good")
    return stage

print(cli.run_stage(fails(sys.argv[2] == "keep"), validate=False))
"""
    for mode, kept in (("plain", False), ("keep", True)):
        out = tmp_path / mode
        result = subprocess.run([sys.executable, "-c", script, str(out), mode],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.stdout.strip() == "2" and "error: no good" in result.stderr
        assert out.exists() == kept and not os.path.exists(str(out) + ".lock")



def _grey_teacher_run(path, toy_folder):
    """A finished run of a tiny 1-channel model on 8 labels per class of the toy folder
    (seed 0, a quarter held out), as train.py records it: what the stages adopt."""
    from conftest import TINY, TOY_CLASSES
    from nstudent import data, export, models

    config = models.ModelConfig(**TINY)
    export.write_run(path, models.build_efficientnet(config), config,
                     data.DatasetInfo("toy", 4, 1, TOY_CLASSES), {},
                     held_out={"dataset": f"folder:{toy_folder}", "labels_per_class": 8,
                               "seed": 0, "validation_fraction": 0.25, "examples": 8})
    return path

def test_pseudo_labeling_refuses_flags_that_disagree_with_its_teacher(tmp_path, toy_folder):
    """What defines the teacher comes from its run: --channels=3 for a grey teacher and
    another labeled subset (--labels_per_class) are refused by name before any work;
    left out, they are taken from the teacher (the log says so)."""
    teacher = _grey_teacher_run(str(tmp_path / "teacher"), toy_folder)
    base = [sys.executable, os.path.join(ROOT, "tools", "pseudo_label.py"),
            f"--dataset=folder:{toy_folder}", f"--teacher={teacher}", "--min_confidence=0",
            "--validation_fraction=0.25"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    for bad, named in ((["--channels=3", "--labels_per_class=8"], "--channels=3"),
                       (["--channels=1", "--labels_per_class=4"], "--labels_per_class=4")):
        out = tmp_path / named.strip("-").replace("=", "")
        result = subprocess.run([*base, *bad, f"--out={out}"], capture_output=True,
                                text=True, timeout=300, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"error: {named} disagrees with the teacher" in result.stderr
        assert not out.exists()
    # left out, taken from the teacher (--phase=select on nothing labeled: no labeling)
    result = subprocess.run([*base, "--phase=select", f"--out={tmp_path / 'adopted'}"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert "From the teacher's run: --channels=1, --labels_per_class=8." in result.stderr
    assert "disagrees" not in result.stderr


def test_student_and_finetuning_refuse_flags_that_disagree_with_their_teacher(tmp_path,
                                                                              toy_folder):
    """The student reads its teacher's labeled subset and channels from the pseudo-label
    folder, fine-tuning from the run it tunes: a disagreeing flag is refused by name,
    exit 2, before any work or folder."""
    pseudo = tmp_path / "pl"
    pseudo.mkdir()
    (pseudo / "stats.json").write_text(json.dumps({
        "channels": 1, "settings": {"dataset": f"folder:{toy_folder}",
                                    "labels_per_class": 8, "seed": 0}}))
    run = _grey_teacher_run(str(tmp_path / "gen1"), toy_folder)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    cases = (
        ("train.py", [f"--pseudo_labels={pseudo}", "--channels=3",
                      f"--out={tmp_path / 'student'}"],
         "--channels=3 disagrees with the pseudo-labels", tmp_path / "student"),
        ("train.py", [f"--pseudo_labels={pseudo}", "--channels=1", "--seed=3",
                      f"--out={tmp_path / 'student'}"],
         "--seed=3 disagrees with the pseudo-labels", tmp_path / "student"),
        ("finetune.py", [f"--run={run}", "--finetune_resolution=24", "--channels=1",
                         "--labels_per_class=4"],
         "--labels_per_class=4 disagrees with the teacher", tmp_path / "gen1"
         / "finetuned_24"))
    for tool, flags, message, out in cases:
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", tool),
             f"--dataset=folder:{toy_folder}", *flags],
            capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"error: {message}" in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and not out.exists()
