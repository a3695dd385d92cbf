"""The noisy student stage: labeled subset + pseudo-labels -> a trained, exported student.

Each step takes batch_size labeled and unlabeled_ratio x batch_size
pseudo-labeled images (see `steps.NoisyStudent` for the loss); an epoch is one
pass over the pseudo-labeled images.
"""

import dataclasses

import tensorflow as tf
from absl import logging

from nstudent import data, models, ranges
from nstudent.errors import InputError
from nstudent.evaluation import load_classifier
from nstudent.training.optim import optimizer_for
from nstudent.training.runs import StageRun, images_only
from nstudent.training.steps import MultiLabelStudent, NoisyStudent, with_device_noise
from nstudent.training.supervised import parse_jit


# what a student started from its teacher takes from it: the input normalisation and
# the head layers a teacher fine-tuned from a pretraining run keeps
INHERITED = ("input_mean", "input_std", "head_units", "head_linear_last")


def _teacher_network(path, model_config, digest=None):
    """(config, the teacher's Keras model) to start the student from; same architecture
    only, and the very teacher that made the pseudo-labels (`digest`, their
    teacher_digest). The student takes the teacher's input normalisation and head
    layers with its weights."""
    classifier = load_classifier(path, prefer="keras", multilabel=True)
    if classifier.keras_model is None:
        raise InputError(f"--init_from_teacher needs the teacher's .keras file; {path!r} "
                         "has none.")
    if digest and classifier.digest != digest:
        raise InputError(
            f"--init_from_teacher: the teacher at {path!r} now has weights digest "
            f"{classifier.digest[:16]}..., but the pseudo-labels were made by weights "
            f"{digest[:16]}... (it was retrained since). Label again with this teacher "
            "(tools/pseudo_label.py --overwrite), or train the student from scratch.")
    if classifier.info:
        teacher = models.ModelConfig.from_dict(classifier.info["model"])
        mine = model_config.replace(**{k: getattr(teacher, k) for k in INHERITED})
        if teacher != mine:
            raise InputError("--init_from_teacher needs the student to have the teacher's "
                             f"architecture; teacher {teacher.to_dict()}, student "
                             f"{model_config.to_dict()}.")
        model_config = mine
    return model_config, classifier.keras_model


def check_distillation(temperature, labeled_loss_weight, settings=None):
    """Distillation divides the student's logits by T and needs the teacher's softmax
    at T; `settings`: the pseudo-labels' (None: flags only)."""
    ranges.check("distill_temperature", temperature)
    ranges.check("labeled_loss_weight", labeled_loss_weight)
    if not temperature or settings is None:
        return
    if settings.get("hard") or settings.get("temperature") != temperature:
        raise InputError(
            f"--distill_temperature={temperature} needs soft pseudo-labels made at the "
            f"same temperature; these are {'hard' if settings.get('hard') else 'soft'} at "
            f"--temperature={settings.get('temperature')}. Label again with "
            f"--temperature={temperature} (and without --hard_labels).")


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """How a student learns from the pseudo-labels, beyond its TrainConfig."""

    unlabeled_ratio: int = 3  # pseudo-labeled batch = this x the labeled batch
    # None: the reference's weighting (google-research/noisystudent's loss is labeled
    # CE + unlabel_ratio x pseudo CE, means over each batch): unlabeled_ratio; 1 for
    # distillation (SimCLRv2's loss alone) and multi-label students (measured at 1)
    pseudo_loss_weight: float = None
    labeled_loss_weight: float = 1.0  # 0: pseudo-labels only (SimCLRv2's distillation)
    init_from_teacher: bool = False  # else from scratch (or from init_weights)
    init_weights: str = None
    distill_temperature: float = 0.0  # > 0: SimCLRv2's distillation loss at this T
    # RandAugment, crop and flip on the pseudo-labeled images; off only for the paper's
    # ablation (dropout and stochastic depth stay: both streams share one forward pass)
    pseudo_noise: bool = True
    # multi-label: weigh each class's pseudo-label loss by stats.json's class_weights
    # (off: the balanced BCE already gives each class's positives their own average;
    # on the mosaics the weights, up to 18x where the teacher was rarely sure, cost
    # 0.08 of validation mAP: docs/multilabel.md)
    pseudo_class_weights: bool = False

    def __post_init__(self):
        ranges.check_fields(self, "unlabeled_ratio", "pseudo_loss_weight",
                            "labeled_loss_weight", "distill_temperature")
        check_distillation(self.distill_temperature, self.labeled_loss_weight)

    def pseudo_weight(self, multilabel=False):
        """The pseudo-label loss weight this student trains with."""
        if self.pseudo_loss_weight is not None:
            return float(self.pseudo_loss_weight)
        return 1.0 if multilabel or self.distill_temperature else float(
            self.unlabeled_ratio)

    def report(self, multilabel=False):
        return dict(dataclasses.asdict(self), pseudo_loss_weight=self.pseudo_weight(
            multilabel))


def train_student(out_dir, stage_data, pseudo, model_config, input_config, train_config,
                  student_config=StudentConfig()):
    """Trains a noisy student on the labeled subset plus `pseudo` (PseudoLabels).

    An epoch is one pass over the pseudo-labeled images (or --steps_per_epoch; a
    train_config.total_steps budget splits into equal epochs); each step takes
    batch_size labeled and unlabeled_ratio * batch_size pseudo-labeled images.
    Returns the metrics of metrics.json.
    """
    return StudentStage(out_dir, stage_data, pseudo, model_config, input_config,
                        train_config, student_config).train()


class StudentStage:
    """The student stage, built and ready to train: `student` (what fit trains: the
    network behind its noise and losses) and `train_ds(start)` (the labeled and
    pseudo-labeled batches after `start` batches) are what `train` runs; the tests
    look at them as the stage wired them."""

    def __init__(self, out_dir, stage_data, pseudo, model_config, input_config,
                 train_config, config=StudentConfig()):
        info, seed = stage_data.info, stage_data.seed
        if pseudo.num_classes != info.num_classes or list(pseudo.class_names) != list(
                info.class_names):
            raise data.DataError(
                f"The pseudo-labels in {pseudo.directory} have {pseudo.num_classes} "
                f"classes {list(pseudo.class_names)}; {info.name} has "
                f"{info.num_classes} {list(info.class_names)}.")
        multilabel = getattr(info, "task", "multiclass") == "multilabel"
        if multilabel != pseudo.multilabel:
            raise data.DataError(
                f"The pseudo-labels in {pseudo.directory} are "
                f"{'multi' if pseudo.multilabel else 'single'}-label; this run's data is "
                f"{'multi' if multilabel else 'single'}-label (--task).")
        check_distillation(config.distill_temperature, config.labeled_loss_weight,
                           pseudo.settings)
        if not config.pseudo_noise and input_config.randaugment_impl == "device":
            raise InputError("--nopseudo_noise needs the host's noise (--randaugment_impl="
                             "keras_cv or keras): the device's noises the whole batch.")
        self.stage_data, self.pseudo, self.input_config = stage_data, pseudo, input_config
        self.config = config
        self.batch = batch = input_config.batch_size
        self.pseudo_batch = batch * config.unlabeled_ratio
        if pseudo.records < self.pseudo_batch:
            raise data.DataError(f"Only {pseudo.records} pseudo-labeled images for a "
                                 f"pseudo batch of {self.pseudo_batch}; lower "
                                 "--batch_size.")
        self.labeled = stage_data.labeled(batch, shuffle=True)
        self.count = len(stage_data.labeled_indices)
        train_config = train_config.resolve(pseudo.records // self.pseudo_batch)
        self.steps = train_config.steps_per_epoch
        logging.info("Student: %d labeled + %d pseudo-labeled images, batches %d + %d, "
                     "%d epochs of %d steps.", self.count, pseudo.records, batch,
                     self.pseudo_batch, train_config.epochs, self.steps)

        self.run = StageRun("student", out_dir, stage_data, model_config, input_config,
                            train_config)
        if config.init_from_teacher:  # read once, outside the scope: only its weights
            model_config, teacher = _teacher_network(
                pseudo.settings["teacher"], model_config, pseudo.settings.get("teacher_digest"))
        with self.run.scope():
            if config.init_from_teacher:
                network = models.build_efficientnet(model_config)
                network.set_weights(teacher.get_weights())
                logging.info("Student starts from the teacher's weights.")
            else:
                model_config, network = models.build_with_weights(model_config,
                                                                  config.init_weights)
            self.run.model_config = model_config
            self.network = network
            noised = with_device_noise(network, input_config, seed)
            if multilabel:
                self.student = MultiLabelStudent(
                    noised, info.num_classes, config.pseudo_weight(multilabel=True),
                    config.labeled_loss_weight,
                    pseudo.stats.get("class_weights") if config.pseudo_class_weights
                    else None)
            else:
                self.student = NoisyStudent(
                    noised, config.pseudo_weight(), train_config.label_smoothing,
                    hard_pseudo_labels=bool(pseudo.settings.get("hard")),
                    distill_temperature=config.distill_temperature,
                    labeled_loss_weight=config.labeled_loss_weight)
            self.student.compile(optimizer=optimizer_for(train_config, self.steps,
                                                         network.trainable_variables),
                                 jit_compile=parse_jit(train_config.jit_compile))
        self.teacher_params = pseudo.settings.get("teacher_parameters")
        if self.teacher_params and network.count_params() < self.teacher_params:
            logging.warning("The student (%d parameters) is smaller than its teacher (%d): "
                            "noisy student expects an equal or larger student.",
                            network.count_params(), self.teacher_params)
        self.settings = {"pseudo_labels": pseudo.settings, **config.report(multilabel)}

    def train_ds(self, start=0):
        """Both streams after `start` steps, zipped: (labeled batch, pseudo batch)."""
        info, seed = self.stage_data.info, self.stage_data.seed
        # new datasets: one object reshuffles from where its last iteration left off
        labeled = self.stage_data.labeled(self.batch, shuffle=True)
        labeled_ds = data.train_dataset(labeled, info.num_classes, self.input_config,
                                        seed=seed, num_examples=self.count, shuffled=True,
                                        start=start)
        pseudo_config = dataclasses.replace(self.input_config, batch_size=self.pseudo_batch)
        pseudo_ds = data.train_dataset(self.pseudo.dataset(), info.num_classes,
                                       pseudo_config, augment=self.config.pseudo_noise,
                                       seed=seed + 1,
                                       num_examples=self.pseudo.records, start=start)
        return tf.data.Dataset.zip((labeled_ds, pseudo_ds)).prefetch(tf.data.AUTOTUNE)

    def train(self):
        """Fits, then recomputes batch norm, scores and exports; returns the metrics."""
        pseudo, network = self.pseudo, self.network
        history, epoch_seconds = self.run.fit(self.student, network, self.train_ds,
                                              self.steps, self.settings)
        clean = self.labeled.map(images_only).concatenate(
            pseudo.dataset().map(images_only))
        return self.run.finish(
            network, clean, history, epoch_seconds, self.batch + self.pseudo_batch,
            self.steps, {
                "labeled_examples": int(self.count),
                "pseudo_labeled_examples": pseudo.records,
                "pseudo_labels": pseudo.directory,
                "teacher": pseudo.settings.get("teacher"),
                "teacher_digest": pseudo.settings.get("teacher_digest"),
                "teacher_parameters": self.teacher_params,
                **{k: v for k, v in self.settings.items() if k != "pseudo_labels"},
                "jit_compile": bool(self.student.jit_compile)})
