"""Runs the generations: gen0 (teacher), then per round pseudo-labels and a student.

  <out>/gen0/                      teacher run (saved_model/, model.keras, metrics.json)
  <out>/pseudo_labels_for_gen1/    gen0's filtered, balanced pseudo-labels
  <out>/gen1/                      noisy student trained on them; the next teacher
  ...
  <out>/manifest.json              finished steps; <out>/accuracy.png at the end
"""

import dataclasses
import os

import keras
from absl import logging

from nstudent import data, export, pseudo_labels, training
from nstudent.evaluation import load_classifier
from nstudent.export.atomic import read_json
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
    unlabeled_ratio: int = 3
    pseudo_loss_weight: float = 1.0
    init_from_teacher: bool = False
    num_shards: int = 1

    def to_dict(self):
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["models"] = [m.to_dict() for m in self.models]
        for key in ("input_config", "teacher_train", "student_train", "label"):
            d[key] = dataclasses.asdict(d[key])
        d["input_config"].pop("image_size")
        return d


def plan_steps(generations):
    """[(step name, kind, generation)] in the order they run."""
    steps = [("gen0", "teacher", 0)]
    for g in range(1, generations + 1):
        steps += [(f"pseudo_labels_for_gen{g}", "pseudo_labels", g),
                  (f"gen{g}", "student", g)]
    return steps


def _summary(metrics):
    keys = ("stage", "test_top1", "test_top5", "parameters", "seconds_total",
            "train_images_per_second", "pseudo_labeled_examples")
    return {k: metrics[k] for k in keys if k in metrics}


def run_pipeline(out_dir, info, train_split, test_split, plan):
    """Runs (or resumes) every step; returns the manifest's per-generation summaries."""
    manifest = Manifest(out_dir, plan.to_dict())
    generations = len(plan.models) - 1
    for name, kind, gen in plan_steps(generations):
        path = os.path.join(out_dir, name)
        if manifest.finished(name):
            if kind != "pseudo_labels" and not export.is_finished(path):
                raise ValueError(f"manifest.json says {name} finished but {path}/metrics.json "
                                 "is missing; the run folder was changed by hand.")
            logging.info("%s: finished earlier; skipped.", name)
            continue
        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(plan.seed + gen)
        logging.info("=== %s (%s) ===", name, kind)
        model_config = plan.models[gen]
        input_config = dataclasses.replace(plan.input_config,
                                           image_size=model_config.resolved_image_size)
        if kind != "pseudo_labels" and export.is_finished(path):
            logging.info("%s: finished before the manifest was written; adopted.", name)
            metrics = read_json(os.path.join(path, export.METRICS))
        elif kind == "teacher":
            metrics = training.train_teacher(
                path, info, train_split, test_split, model_config, input_config,
                plan.teacher_train, plan.labels_per_class, plan.seed)
        elif kind == "pseudo_labels":
            manifest.record(name, _label(out_dir, gen, info, train_split, plan, path))
            continue
        else:
            metrics = training.train_student(
                path, info, train_split, test_split,
                pseudo_labels.load_pseudo_labels(
                    os.path.join(out_dir, f"pseudo_labels_for_gen{gen}")),
                model_config, input_config, plan.student_train, plan.labels_per_class,
                plan.seed, plan.unlabeled_ratio, plan.pseudo_loss_weight,
                plan.init_from_teacher)
        manifest.record(name, dict(_summary(metrics), generation=gen))
    return [manifest.summary(f"gen{g}") for g in range(generations + 1)]


def _label(out_dir, gen, info, train_split, plan, path):
    teacher_dir = os.path.join(out_dir, f"gen{gen - 1}")
    _, unlabeled = data.split_labeled(train_split.labels, info.num_classes,
                                      plan.labels_per_class, plan.seed)
    classifier = load_classifier(teacher_dir)
    settings = pseudo_labels.teacher_settings(
        classifier, teacher_dir, plan.dataset, train_split.name, plan.labels_per_class,
        plan.seed, plan.label)
    stats = pseudo_labels.label_shards(
        classifier, info, train_split, unlabeled, range(plan.num_shards), plan.num_shards,
        plan.label, path, settings)
    n = sum(s["images_in"] for s in stats)
    return {"records": sum(s["records"] for s in stats), "images_in": n,
            "kept_after_filter": sum(s["kept_after_filter"] for s in stats),
            "agreement_with_dataset_labels": sum(
                s["agreement_with_dataset_labels"] * s["images_in"] for s in stats) / n}
