"""Runs the generations: gen0 (teacher), then per round pseudo-labels and a student.

  <out>/pretrain/                  SimCLRv2 pretraining (optional: --pretrain)
  <out>/gen0/                      teacher run (saved_model/, model.keras, metrics.json),
                                   fine-tuned from pretrain/ when there is one
  <out>/pseudo_labels_for_gen1/    gen0's filtered, balanced pseudo-labels
  <out>/gen1/                      noisy student trained on them; the next teacher
  ...
  <out>/genK/robustness.json       accuracy under corruptions and FGSM (optional)
  <out>/genK/finetuned_<res>/      fine-tuned at a higher resolution (optional)
  <out>/manifest.json              finished steps; <out>/accuracy.png at the end
"""

import dataclasses
import os

import keras
from absl import logging

from nstudent import export, pseudo_labels, training
from nstudent.errors import InputError
from nstudent.evaluation import load_classifier
from nstudent.export.atomic import read_json, write_json
from nstudent.pipeline.manifest import Manifest


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a pipeline run depends on; stored in its manifest."""

    models: tuple  # ModelConfig per generation; models[0] is the first teacher
    input_config: object  # data.InputConfig; image_size is set per model
    teacher_train: object  # training.TrainConfig
    student_train: object
    label: object  # pseudo_labels.LabelConfig
    dataset: str
    labels_per_class: int
    seed: int
    unlabeled_dataset: str = ""  # a separate unlabeled source; "": the train split's rest
    init_weights: str = ""  # the teacher starts from this weights file
    student: object = None  # training.StudentConfig of every student
    num_shards: int = 1
    finetune_resolution: int = 0  # 0: no fine-tuning
    finetune_all: bool = False  # every generation, not only the last
    finetune_train: object = None  # training.TrainConfig
    freeze_blocks: int = -1
    corruptions: tuple = ()  # robustness: corruption names (all severities)
    fgsm_epsilons: tuple = ()
    robustness_examples: int = 0  # 0: the whole test split
    # SimCLRv2 first: pretraining settings {"input", "train", "contrastive"} (None: no
    # pretraining); gen0 then fine-tunes from it, keeping ft_proj_selector head layers
    pretrain: dict = None
    ft_proj_selector: int = 1

    def to_dict(self):
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["models"] = [m.to_dict() for m in self.models]
        for key in ("input_config", "teacher_train", "student_train", "label",
                    "finetune_train", "student"):
            d[key] = dataclasses.asdict(d[key]) if d[key] is not None else None
        d["input_config"].pop("image_size")
        if self.pretrain:
            d["pretrain"] = {k: dataclasses.asdict(v) for k, v in self.pretrain.items()}
        d["corruptions"], d["fgsm_epsilons"] = list(self.corruptions), list(self.fgsm_epsilons)
        return d

    @property
    def robustness(self):
        return bool(self.corruptions or self.fgsm_epsilons)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    kind: str  # pretrain, teacher, pseudo_labels, student, finetune, robustness
    generation: int
    path: str  # relative to the run folder


def plan_steps(plan):
    """The steps in the order they run."""
    generations = len(plan.models) - 1
    steps = []

    def model(kind, g, path):
        steps.append(Step(path.replace("/", "_"), kind, g, path))
        if plan.robustness:
            steps.append(Step(f"robustness_{path.replace('/', '_')}", "robustness", g,
                              path))

    if plan.pretrain:
        steps.append(Step("pretrain", "pretrain", 0, "pretrain"))
    model("teacher", 0, "gen0")
    for g in range(1, generations + 1):
        steps.append(Step(f"pseudo_labels_for_gen{g}", "pseudo_labels", g,
                          f"pseudo_labels_for_gen{g}"))
        model("student", g, f"gen{g}")
    if plan.finetune_resolution:
        for g in (range(generations + 1) if plan.finetune_all else [generations]):
            model("finetune", g, f"gen{g}/finetuned_{plan.finetune_resolution}")
    return steps


ROBUSTNESS = "robustness.json"
MODEL_KINDS = ("teacher", "student", "finetune")


def _summary(metrics):
    keys = ("stage", "test_top1", "test_top5", "test_map", "test_micro_f1",
            "test_macro_f1", "parameters", "seconds_total",
            "train_images_per_second", "pseudo_labeled_examples", "resolution",
            "knn_top1", "linear_eval_top1")
    return {k: metrics[k] for k in keys if k in metrics}


def _done(step, path):
    if step.kind in MODEL_KINDS or step.kind == "pretrain":
        return export.is_finished(path)
    if step.kind == "robustness":
        return os.path.exists(os.path.join(path, ROBUSTNESS))
    return True  # pseudo-labels: each phase checks its own files


def run_pipeline(out_dir, stage_data, plan):
    """Runs (or resumes) every step; returns the summaries of the models, in order."""
    manifest = Manifest(out_dir, plan.to_dict())
    steps = plan_steps(plan)
    for step in steps:
        path = os.path.join(out_dir, step.path)
        if manifest.finished(step.name):
            if not _done(step, path):
                raise InputError(f"manifest.json says {step.name} finished but {path} is "
                                 "incomplete; the run folder was changed by hand.")
            logging.info("%s: finished earlier; skipped.", step.name)
            continue
        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(plan.seed + step.generation)
        logging.info("=== %s (%s) ===", step.name, step.kind)
        if step.kind != "pseudo_labels" and _done(step, path):
            logging.info("%s: finished before the manifest was written; adopted.", step.name)
            summary = (read_json(os.path.join(path, ROBUSTNESS))
                       if step.kind == "robustness"
                       else _summary(read_json(os.path.join(path, export.METRICS))))
        else:
            summary = _run_step(step, out_dir, path, stage_data, plan)
        manifest.record(step.name, dict(summary, generation=step.generation,
                                        path=step.path))
    if plan.pretrain:
        encoder = manifest.summary("pretrain")
        logging.info("Pretrained encoder (pretrain/): kNN top-1 %.4f, linear probe top-1 "
                     "%.4f.", encoder["knn_top1"], encoder["linear_eval_top1"])
    rows = []
    for step in steps:
        if step.kind in MODEL_KINDS:
            row = dict(manifest.summary(step.name))
            if plan.robustness:
                row["robustness"] = manifest.summary(f"robustness_{step.name}")
            rows.append(row)
    return rows


def _run_step(step, out_dir, path, stage_data, plan):
    g = step.generation
    model_config = plan.models[g]
    input_config = dataclasses.replace(plan.input_config,
                                       image_size=model_config.resolved_image_size)
    if step.kind == "pretrain":
        from nstudent.pretraining import pretrain

        return _summary(pretrain(path, stage_data, model_config, **plan.pretrain))
    if step.kind == "teacher":
        return _summary(training.train_teacher(
            path, stage_data, model_config, input_config, plan.teacher_train,
            plan.init_weights or None,
            os.path.join(out_dir, "pretrain") if plan.pretrain else None,
            plan.ft_proj_selector))
    if step.kind == "pseudo_labels":
        return _label(out_dir, g, stage_data, plan, path)
    if step.kind == "student":
        return _summary(training.train_student(
            path, stage_data,
            pseudo_labels.load_pseudo_labels(os.path.join(out_dir, f"pseudo_labels_for_gen{g}")),
            model_config, input_config, plan.student_train,
            plan.student or training.StudentConfig()))
    if step.kind == "finetune":
        from nstudent.training.finetune import finetune

        resolution = plan.finetune_resolution
        return _summary(finetune(
            os.path.join(out_dir, f"gen{g}"), path, stage_data, resolution,
            dataclasses.replace(input_config, image_size=resolution), plan.finetune_train,
            plan.freeze_blocks))
    return _robustness(path, stage_data, plan)


def _robustness(path, stage_data, plan):
    from nstudent.evaluation import robustness_report

    classifier = load_classifier(path, prefer="keras", multilabel=True)
    report = robustness_report(
        classifier, stage_data.test, stage_data.info, classifier.image_size, 256,
        plan.corruptions,
        epsilons=plan.fgsm_epsilons, examples=plan.robustness_examples, seed=plan.seed)
    write_json(os.path.join(path, ROBUSTNESS), report)
    return report


def _label(out_dir, gen, stage_data, plan, path):
    """Both phases: every shard labeled by gen-1, then one global selection."""
    stats = pseudo_labels.pseudo_label(
        os.path.join(out_dir, f"gen{gen - 1}"), stage_data, plan.label, path,
        num_shards=plan.num_shards)
    summary = {k: stats[k] for k in ("records", "distinct_images", "images_read",
                                      "above_threshold", "per_class", "classes")
               if k in stats}  # a multi-label selection has per-class rows instead
    if "agreement_with_dataset_labels" in stats:
        summary["agreement_with_dataset_labels"] = stats["agreement_with_dataset_labels"]
    return summary
