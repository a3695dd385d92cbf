"""Bad input: one base class for every input check, one line and exit 2 for it,
a traceback for anything else, and every flag's range checked before any data.

The flag table runs in this process through the pipeline tool's own check (it
takes every shared flag and its own), not a subprocess per flag.
"""

import ast
import importlib.util
import os
import pathlib
import re

import pytest
from absl import flags

from nstudent import cli
from nstudent.errors import InputError, MissingInput

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS


def _python_files():
    return sorted(list((ROOT / "nstudent").rglob("*.py")) + list((ROOT / "tools").glob("*.py")))


def test_input_checks_raise_input_errors_only():
    """No plain ValueError or FileNotFoundError is raised anywhere: an input check
    raises an InputError (or a subclass), which the tools print in one line."""
    plain = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", getattr(node.exc.func, "attr", ""))
                if name in ("ValueError", "FileNotFoundError"):
                    plain.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not plain, plain
    from nstudent.data import DataError
    from nstudent.models.pretrained import WeightsError
    from nstudent.pseudo_labels import ShardError

    for cls in (DataError, ShardError, WeightsError, MissingInput):
        assert issubclass(cls, InputError)
    assert issubclass(InputError, ValueError) and issubclass(MissingInput, FileNotFoundError)


def test_input_error_is_one_line_and_exit_2_a_bug_keeps_its_traceback(capsys):
    def bad_input():
        raise MissingInput("no file at 'x.jpg'")

    assert cli.run_stage(bad_input, validate=False) == 2
    assert capsys.readouterr().err == "error: no file at 'x.jpg'\n"

    def bug():
        raise ValueError("a bug, not the user's input")

    with pytest.raises(ValueError, match="a bug"):  # absl prints it, exit 1
        cli.run_stage(bug, validate=False)
    with pytest.raises(KeyError):
        cli.run_stage(lambda: {}["missing"], validate=False)


def _pipeline_tool():
    spec = importlib.util.spec_from_file_location("pipeline_tool", ROOT / "tools" /
                                                  "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the shared flags and its own
    return module


@pytest.fixture(scope="module")
def pipeline_tool():
    yield _pipeline_tool()
    FLAGS.unparse_flags()  # as the other tests in this process found them


def _check(tool, *args):
    FLAGS.unparse_flags()
    FLAGS(["pipeline.py", f"--flagfile={ROOT}/flags/fashion_mnist_noisy_student.cfg",
           "--out=unused", *args])
    tool.check_flags()


# (flag as a user would type it, what the error must name); the list first
BAD_FLAGS = [
    ("--labels_per_class=-3", "--labels_per_class must not be negative, got -3"),
    ("--unlabeled_ratio=0", "--unlabeled_ratio must be at least 1, got 0"),
    ("--width_scale=0", "--width_scale must be positive, got 0"),
    ("--depth_scale=0", "--depth_scale"),
    ("--batch_size=0", "--batch_size"),
    ("--steps_per_epoch=-1", "--steps_per_epoch"),
    ("--per_class=-5", "--per_class"),
    ("--pseudo_loss_weight=-1", "--pseudo_loss_weight"),
    ("--stochastic_depth=-0.1", "--stochastic_depth"),
    ("--stochastic_depth=1", r"--stochastic_depth must be in \[0, 1\), got 1"),
    ("--learning_rate=0", "--learning_rate"),
    ("--learning_rate=-0.1", "--learning_rate"),
    ("--generations=-1", "--generations"),
    ("--models=b0,b9", "--models: unknown variant.*b9"),
    ("--randaugment_layers=-1", "--randaugment_layers"),
    ("--randaugment_magnitude=11", "--randaugment_magnitude"),
    ("--epochs=-1", "--epochs"),
    ("--dropout=1", "--dropout must be below 1, got 1"),
    ("--warmup_epochs=-1", "--warmup_epochs"),
    ("--weight_decay=-0.1", "--weight_decay"),
    ("--crop_padding=-2", "--crop_padding"),
    ("--min_confidence=1.5", "--min_confidence"),
    ("--temperature=0", "--temperature"),
    ("--max_copies=-1", "--max_copies"),
    ("--label_batch_size=0", "--label_batch_size"),
    ("--ema_decay=1", "--ema_decay"),
    ("--grad_accum_steps=0", "--grad_accum_steps"),
    ("--validation_fraction=1", "--validation_fraction"),
    ("--finetune_epochs=-1", "--finetune_epochs"),
    ("--finetune_learning_rate=0", "--finetune_learning_rate"),
    ("--freeze_blocks=-2", "--freeze_blocks"),
    ("--student_epochs=-1", "--student_epochs"),
    ("--student_learning_rate=-1", "--student_learning_rate"),
    ("--num_shards=0", "--num_shards"),
    ("--robustness_examples=-1", "--robustness_examples"),
    ("--pretrain_batch_size=1", "needs at least 2 images per replica"),
    ("--pretrain_learning_rate=0", "--pretrain_learning_rate"),
    ("--contrastive_temperature=0", "--contrastive_temperature"),
    ("--knn_k=0", "--knn_k"),
    ("--proj_head_layers=0", "--proj_head_layers"),
    ("--ft_proj_selector=-1", "--ft_proj_selector"),
    ("--distill_temperature=-1", "--distill_temperature"),
    ("--labeled_loss_weight=-1", "--labeled_loss_weight"),
    ("--corruptions=fog", "--corruptions: unknown fog"),
    ("--fgsm_epsilons=2/0", "FGSM epsilon"),
]


@pytest.mark.parametrize("flag,names", BAD_FLAGS)
def test_every_bad_flag_stops_before_any_data(pipeline_tool, flag, names):
    with pytest.raises(InputError, match=names):
        _check(pipeline_tool, flag)


@pytest.mark.parametrize("flags_", [(), ("--image_size=0",), ("--labels_per_class=0",),
                                    ("--randaugment_layers=0",), ("--dropout=-1",),
                                    ("--per_class=0", "--max_copies=0")])
def test_good_flags_pass(pipeline_tool, flags_):
    _check(pipeline_tool, *flags_)  # 0 means "the default" for these


def test_randaugment_refuses_a_negative_count():
    from nstudent.augment import DeviceNoise, make_randaugment
    from nstudent.data import InputConfig

    with pytest.raises(InputError, match="--randaugment_layers must not be negative"):
        make_randaugment(-1, 9)
    with pytest.raises(InputError, match="--randaugment_layers must not be negative"):
        DeviceNoise(-2, 9)
    with pytest.raises(InputError, match="--randaugment_layers"):
        InputConfig(image_size=16, batch_size=4, randaugment_layers=-1)
    assert os.environ.get("NSTUDENT_TRACEBACK") is None


SWEEP = r"""
import importlib.util, io, json, sys, contextlib
from absl import flags
spec = importlib.util.spec_from_file_location("tool", sys.argv[1])
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
from nstudent import cli
FLAGS, seen = flags.FLAGS, {}
for name in sorted(FLAGS):
    flag = FLAGS[name]
    if not isinstance(flag, (flags.EnumFlag, flags.EnumClassFlag)) or name in seen:
        continue
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli.parse_flags([sys.argv[1], f"--{name}=no_such_choice"])
            code = 0
        except SystemExit as e:
            code = e.code
    FLAGS.unparse_flags()
    seen[name] = [code, err.getvalue()]
print(json.dumps(seen))
"""


def test_every_tool_refuses_a_bad_choice_with_one_line_and_exit_2():
    """Every fixed-choice flag of every tool, given a value outside its choices: exit 2
    and one `error:` line naming the flag (absl's own parser says FATAL and exits 1).
    The tools run side by side, one process each (each defines its flags)."""
    import json
    import subprocess
    import sys

    tools = sorted((ROOT / "tools").glob("*.py"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    running = {t.name: subprocess.Popen([sys.executable, "-c", SWEEP, str(t)], env=env,
                                        cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for t in tools}
    for name, process in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-2000:]
        swept = json.loads(out.strip().splitlines()[-1])
        assert swept, name
        if name == "train.py":
            assert {"model", "randaugment_impl", "task", "stage_strides"} <= set(swept)
        for flag, (code, stderr) in swept.items():
            lines = stderr.strip().splitlines()
            assert code == 2 and len(lines) == 1, (name, flag, code, stderr)
            assert lines[0].startswith("error:") and f"--{flag}" in lines[0], (name, lines)


def test_a_bad_choice_and_an_unknown_flag_exit_2_from_the_command_line(tmp_path):
    """As a user types them: `train.py --model=b9` and a misspelt flag, one line each."""
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for arg, named in (("--model=b9", "--model"), ("--epoch=3", "epoch")):
        result = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), arg,
                                 f"--out={tmp_path}/x"], capture_output=True, text=True,
                                env=env, timeout=300)
        lines = [x for x in result.stderr.strip().splitlines() if x]
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0]
        assert "FATAL" not in result.stderr and not (tmp_path / "x").exists()


# functions that only check flags (a value they check is not one the tool reads), and
# help_lists itself (FLAGS' own method is no flag)
_CHECKS = {"validate_flags", "check_flag_ranges", "check_range", "main_of", "run_stage",
           "help_lists"}


def _flags_read(tool):
    """FLAGS.<name> a tool reads: in its own file, and in the cli functions it calls
    (followed through cli), read from the source with ast, not from cli.GROUPS."""
    cli_tree = ast.parse((ROOT / "nstudent" / "cli.py").read_text())
    functions = {n.name: n for n in cli_tree.body if isinstance(n, ast.FunctionDef)}

    def reads(node, seen):
        found = set()
        for x in ast.walk(node):
            if isinstance(x, ast.Attribute) and getattr(x.value, "id", "") == "FLAGS":
                found.add(x.attr)
            called = getattr(x, "func", None) if isinstance(x, ast.Call) else None
            name = getattr(called, "id", None) or (
                called.attr if isinstance(called, ast.Attribute)
                and getattr(called.value, "id", "") == "cli" else None)
            if name in functions and name not in seen and name not in _CHECKS:
                seen.add(name)
                found |= reads(functions[name], seen)
        return found

    return reads(ast.parse((ROOT / "tools" / tool).read_text()), set())


def _help(tool, which="--help"):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "tools" / tool), which],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert "Try --helpfull" in result.stdout or which == "--helpfull", result.stderr[-2000:]
    return {line.split(":")[0].strip().replace("--[no]", "--")
            for line in result.stdout.splitlines() if line.startswith("  --")}


@pytest.mark.parametrize("tool", ["train.py", "pseudo_label.py", "finetune.py",
                                  "pretrain.py", "pipeline.py"])
def test_each_tool_help_lists_the_flags_it_reads_and_helpfull_all(tool):
    listed = _help(tool)
    read = {f"--{name}" for name in _flags_read(tool)}
    assert read and read <= listed, f"read but not in --help: {sorted(read - listed)}"
    everything = _help(tool, "--helpfull")
    assert listed < everything and {"--blur", "--backup_every_steps"} <= everything
    if tool == "pseudo_label.py":  # a labeling user's list: no SimCLR, no training
        assert len(listed) < 60, len(listed)
        assert not {"--blur", "--backup_every_steps", "--epochs"} & listed
        assert {"--teacher", "--min_confidence", "--dataset", "--precision"} <= listed


def test_each_range_is_written_once_and_every_config_checks_it_with_the_flags_message():
    """No module but nstudent/ranges.py phrases a range ("--name must be ...") for a
    setting of its table; a config made from Python refuses an out-of-range field with
    the same message as the flag (the table's rule, by hand here)."""
    from nstudent import models, ranges
    from nstudent.data import InputConfig
    from nstudent.pseudo_labels import LabelConfig
    from nstudent.training import StudentConfig, TrainConfig

    names = {name for name, *_ in ranges.RANGES}
    phrased = []
    for path in _python_files():
        if path.name == "ranges.py":
            continue
        for name in names:
            if re.search(rf"--{name} must (be|not)", path.read_text()):
                phrased.append(f"{path.relative_to(ROOT)}: --{name}")
    assert not phrased, phrased
    cases = ((lambda: TrainConfig(ema_decay=1.0), "--ema_decay must be in [0, 1), got 1.0"),
             (lambda: TrainConfig(total_steps=-1), "--train_steps must not be negative"),
             (lambda: StudentConfig(unlabeled_ratio=0), "--unlabeled_ratio must be at least 1"),
             (lambda: models.ModelConfig(width_scale=0), "--width_scale must be positive"),
             (lambda: InputConfig(16, 4, fill_value=256), "--fill_value must be in [0, 255]"),
             (lambda: LabelConfig(chunk_size=0), "--label_chunk_size must be at least 1"))
    for make, message in cases:
        with pytest.raises(InputError) as error:
            make()
        assert str(error.value).startswith(message), str(error.value)
