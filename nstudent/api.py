"""The Python API: the loop's stages as functions that take data, a recipe and run
folders, and return what they made.

    import nstudent as ns

    ns.setup(seed=0)
    recipe = ns.preset("fashion_mnist_noisy_student", epochs=2, student_epochs=1)
    data = ns.load_data(recipe)
    teacher = ns.train_teacher(data, recipe, "runs/api/teacher")
    labels = ns.pseudo_label(teacher, data, recipe, "runs/api/labels")
    student = ns.train_student(data, labels, recipe, "runs/api/student")
    print(teacher.metrics["test_top1"], "->", student.metrics["test_top1"])

A recipe is a shipped flagfile (flags/<name>.cfg) or any flagfile, with keyword
overrides, read through the tools' own flag definitions: the same names, defaults and
range checks as on the command line, so a recipe and a tool run agree. The stages are
the tools' (training.train_teacher, pseudo_labels.pseudo_label, training.train_student):
they write the same run folders, resume the same way and refuse the same bad input.
"""

import contextlib
import dataclasses
import os
from typing import Optional

from absl import flags

from nstudent import cli
from nstudent.errors import InputError

FLAGS = flags.FLAGS
FLAGFILES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "flags")
# the pipeline tool's own settings a recipe may carry for the student
STUDENT_SCHEDULE = {"student_epochs": 0, "student_warmup_epochs": -1.0,
                    "student_learning_rate": 0.0, "generations": 2}


def _define_flags():
    cli.define_shared_flags()  # once per process
    if not FLAGS.is_parsed():
        FLAGS.mark_as_parsed()  # a library caller has no command line


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Every shared setting by flag name (`settings`), plus the pipeline's student
    schedule (`student_epochs`, `student_warmup_epochs`, `student_learning_rate`,
    `generations`)."""
    settings: dict
    schedule: dict = dataclasses.field(default_factory=lambda: dict(STUDENT_SCHEDULE))

    def replace(self, **overrides):
        """A copy with some settings changed, by flag name (unknown names refused)."""
        settings, schedule = dict(self.settings), dict(self.schedule)
        for name, value in overrides.items():
            if name in schedule:
                schedule[name] = value
            elif name in settings:
                settings[name] = value
            else:
                raise InputError(f"{name!r} is not a setting of nstudent's tools; see "
                                 "`python tools/pipeline.py --helpfull`.")
        return Recipe(settings, schedule)

    @contextlib.contextmanager
    def applied(self):
        """The settings as the tools' flag values for the duration (then restored), so
        the tools' own config builders and checks read them."""
        _define_flags()
        saved = {name: FLAGS[name].value for name in self.settings}
        try:
            for name, value in self.settings.items():
                FLAGS[name].value = value
            cli.check_flag_ranges()
            yield
        finally:
            for name, value in saved.items():
                FLAGS[name].value = value


def preset(name="fashion_mnist_noisy_student", **overrides):
    """A recipe from a flagfile: a name in flags/ (without .cfg) or a path; keyword
    overrides by flag name, e.g. `preset("fashion_mnist_teacher", epochs=5)`."""
    _define_flags()
    path = name if os.path.isfile(name) else os.path.join(FLAGFILES, f"{name}.cfg")
    if not os.path.isfile(path):
        shipped = sorted(f[:-4] for f in os.listdir(FLAGFILES) if f.endswith(".cfg"))
        raise InputError(f"No recipe {name!r}: give a flagfile's path or one of {shipped}.")
    settings = {flag: FLAGS[flag].default for flag in cli.shared_flag_names()}
    schedule = dict(STUDENT_SCHEDULE)
    for arg in _flagfile_args(path, shipped=not os.path.isfile(name)):
        key, has_value, value = arg.lstrip("-").partition("=")
        if not has_value:  # a boolean: --name or --noname
            key, value = (key[2:], "false") if key.startswith("no") and \
                key[2:] in FLAGS else (key, "true")
        if key in schedule:
            schedule[key] = type(STUDENT_SCHEDULE[key])(value)
        elif key in settings:
            settings[key] = FLAGS[key].parser.parse(value)
        # other tools' own flags (--out, --corruptions, ...) are not the recipe's
    return Recipe(settings, schedule).replace(**overrides)


def _flagfile_args(path, shipped):
    """The flagfile's arguments; a shipped one's nested --flagfile lines name paths
    from the project's root (as the tools run them), so they are read from there."""
    here = os.getcwd()
    try:
        if shipped:
            os.chdir(os.path.dirname(FLAGFILES))
        return FLAGS.read_flags_from_files([f"--flagfile={os.path.abspath(path)}"],
                                           force_gnu=False)
    finally:
        os.chdir(here)


def setup(seed=0, precision="float32", distribution="none", sync_batchnorm=False):
    """Seeds, Keras' dtype policy and the device strategy: what every stage needs set
    once before it runs (the tools do the same from their flags)."""
    import keras

    from nstudent import training

    training.configure_distribution(distribution, sync_batchnorm)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(seed)


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run folder: its metrics (metrics.json) and, loaded when first asked
    for, its model (model.keras)."""
    path: str
    metrics: dict

    @property
    def model(self):
        import keras

        return keras.saving.load_model(os.path.join(self.path, "model.keras"))


@dataclasses.dataclass(frozen=True)
class PseudoLabelSet:
    """A finished pseudo-label folder (sharded TFRecords) and its stats.json."""
    path: str
    stats: dict


def load_data(recipe, unlabeled_dataset: Optional[str] = None):
    """The labeled subset, its held-out part, the test split and the unlabeled images
    the recipe names (data.StageData)."""
    if unlabeled_dataset:
        recipe = recipe.replace(unlabeled_dataset=unlabeled_dataset)
    with recipe.applied():
        return cli.load_stage_data(unlabeled=True)


def _path(run):
    return run.path if isinstance(run, (Run, PseudoLabelSet)) else str(run)


def train_teacher(data, recipe, out, init_weights=None):
    """A supervised teacher on the labeled subset, with the recipe's noise; `out` gets
    the run folder. Returns the Run."""
    from nstudent import training

    with recipe.applied():
        model_config = cli.model_config(data.info)
        metrics = training.train_teacher(
            out, data, model_config, cli.input_config(model_config.resolved_image_size),
            cli.train_config(), init_weights or FLAGS.init_weights or None)
    return Run(out, metrics)


def pseudo_label(teacher, data, recipe, out):
    """The clean teacher (a Run, run folder, .keras file or SavedModel) labels the
    unlabeled images; one selection over all of them writes the set to `out`."""
    from nstudent import pseudo_labels

    with recipe.applied():
        stats = pseudo_labels.pseudo_label(_path(teacher), data, cli.label_config(), out)
    return PseudoLabelSet(out, stats)


def train_student(data, labels, recipe, out):
    """A noisy student on the labeled subset plus `labels` (a PseudoLabelSet or
    folder), from scratch unless the recipe says --init_from_teacher; trained for the
    recipe's student_epochs (else epochs). Returns the Run."""
    from nstudent import pseudo_labels, training

    with recipe.applied():
        model_config = cli.model_config(data.info)
        schedule = recipe.schedule
        train_config = cli.student_schedule(
            cli.train_config(), schedule["student_epochs"],
            schedule["student_learning_rate"], schedule["student_warmup_epochs"])
        metrics = training.train_student(
            out, data, pseudo_labels.load_pseudo_labels(_path(labels)), model_config,
            cli.input_config(model_config.resolved_image_size), train_config,
            cli.student_config())
    return Run(out, metrics)
