"""The labeling stage end to end: the teacher labels the shards (labeler.py), then
one selection over the whole collection writes the set (writer.py, multilabel.py),
with --min_precision's cut-offs measured on the held-out labeled images first."""

from absl import logging

from nstudent import data
from nstudent.errors import InputError
from nstudent.evaluation import load_classifier
from nstudent.evaluation.calibration import predicted_logits
from nstudent.pseudo_labels.cutoffs import precision_cutoffs
from nstudent.pseudo_labels.labeler import label_shards, teacher_settings
from nstudent.pseudo_labels.multilabel import select_multilabel
from nstudent.pseudo_labels.selection import soften
from nstudent.pseudo_labels.writer import missing_shards, select, write_to_label


def pseudo_label(teacher_path, stage_data, config, out_dir, shards=None, num_shards=1,
                 overwrite=False, phase="all"):
    """The whole stage: a teacher (run folder, .keras or SavedModel) labels the
    unlabeled images of `stage_data` (phase "label", the shards in `shards`), and
    once every shard is labeled the selection writes the pseudo-labeled set
    (phase "select"). Returns the selection's stats, or None when shards are
    still missing."""
    classifier = load_classifier(teacher_path, prefer="keras", multilabel=True)
    settings = teacher_settings(classifier, teacher_path, stage_data, config, num_shards)
    multilabel = settings["task"] == "multilabel"
    if phase in ("all", "label"):
        label_shards(classifier, stage_data, range(num_shards) if shards is None else shards,
                     num_shards, config, out_dir, settings, overwrite)
    if phase == "label":
        return None
    if phase == "all" and missing_shards(out_dir, num_shards):
        return None  # the caller names them (missing_shards)
    if multilabel:
        return select_multilabel(stage_data, config, out_dir, settings, overwrite)
    cutoffs = None
    if config.min_precision:
        cutoffs = held_out_cutoffs(classifier, stage_data, config,
                                   settings["calibration_temperature"])
    stats = select(stage_data, config, out_dir, settings, overwrite=overwrite,
                   cutoffs=cutoffs)
    if config.to_label:
        write_to_label(stage_data, out_dir, settings, config, config.to_label)
    return stats


def held_out_cutoffs(classifier, stage_data, config, calibration):
    """--min_precision's per-class cut-offs, measured on the held-out labeled images
    with the confidence the selection uses (the teacher's T times --temperature)."""
    if classifier.logits is None:
        raise InputError(f"--min_precision needs the teacher's logits; {classifier.path!r} "
                         "has no logits endpoint (give its run folder or .keras file).")
    held = stage_data.validation_indices
    batches = data.eval_dataset(
        stage_data.train.dataset(held), stage_data.info.num_classes,
        data.InputConfig.for_evaluation(classifier.image_size, config.batch_size,
                                        classifier.crop_fraction))
    logits, onehot = predicted_logits(classifier.logits, batches)
    probs = soften(logits, config.temperature * calibration)
    cutoffs = precision_cutoffs(probs.max(-1), probs.argmax(-1), onehot.argmax(-1),
                                stage_data.info.num_classes, config.min_precision,
                                config.min_precision_count, config.min_confidence)
    names = stage_data.info.class_names
    logging.info("--min_precision=%g on %d held-out images: %s.", config.min_precision,
                 len(held), "; ".join(
                     f"{n} {'keeps none' if c.source == 'none' else format(c.cutoff, '.3f')}"
                     f" ({c.source}, {c.held_out} predicted)"
                     for n, c in zip(names, cutoffs)))
    return cutoffs
