"""The Python API (`import nstudent as ns`): recipes read through the tools' flag
definitions, and the example that runs the loop from Python."""

import os
import subprocess
import sys

import pytest

from conftest import write_photo_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _by_hand(path, seen=None):
    """A flagfile's `--name=value` lines as the file says them, nested files first."""
    values = {}
    for line in open(os.path.join(ROOT, path)):
        line = line.strip()
        if line.startswith("--flagfile="):
            values.update(_by_hand(line.split("=", 1)[1]))
        elif line.startswith("--"):
            name, _, value = line[2:].partition("=")
            values[name] = value or "true"
    return values


def test_a_preset_holds_what_its_flagfile_says():
    import nstudent as ns

    recipe = ns.preset("fashion_mnist_noisy_student")
    lines = _by_hand("flags/fashion_mnist_noisy_student.cfg")
    assert lines["epochs"] == "40"  # the main job's line over the teacher file's 60
    for name, value in lines.items():
        if name in recipe.settings:
            got = recipe.settings[name]
            assert str(got).lower() == value.lower() or float(got) == float(value), name
    assert recipe.schedule["student_epochs"] == int(lines["student_epochs"])
    assert recipe.settings["unlabeled_dataset"] is None  # a default the file leaves
    assert ns.preset("fashion_mnist_teacher", epochs=5).settings["epochs"] == 5


def test_recipes_refuse_unknown_names_and_out_of_range_values_and_restore_flags():
    import nstudent as ns
    from absl import flags
    from nstudent.errors import InputError

    with pytest.raises(InputError, match="'epoch' is not a setting"):
        ns.preset("fashion_mnist_teacher", epoch=5)
    with pytest.raises(InputError, match="No recipe 'nope'"):
        ns.preset("nope")
    recipe = ns.preset("fashion_mnist_teacher", learning_rate=-1.0)
    with pytest.raises(InputError, match="--learning_rate"):
        with recipe.applied():
            pass
    before = flags.FLAGS.epochs
    with ns.preset("fashion_mnist_teacher", epochs=7).applied():
        assert flags.FLAGS.epochs == 7
    assert flags.FLAGS.epochs == before


def test_the_example_runs_the_loop_from_python(tmp_path):
    """examples/noisy_student.py as a user runs it, on a folder of JPEGs of mixed sizes
    (tiny model): three finished run folders and the teacher -> student line."""
    root = tmp_path / "photos"
    write_photo_folder(root, per_class=8, unlabeled=24)
    out = tmp_path / "runs"
    args = [f"dataset=folder:{root / 'labeled'}", f"unlabeled_dataset=folder:{root / 'unlabeled'}",
            "channels=3", "labels_per_class=0", "image_size=16", "width_scale=0.25",
            "depth_scale=0.25", "epochs=1", "student_epochs=1", "batch_size=4",
            "unlabeled_ratio=1", "min_confidence=0.0",
            f"out={out}"]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "noisy_student.py"),
                             *args], capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                                     KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher 0." in result.stdout and "-> student 0." in result.stdout
    for run in ("teacher", "student"):
        assert (out / run / "metrics.json").exists() and (out / run / "model.keras").exists()
    assert (out / "labels" / "stats.json").exists()
