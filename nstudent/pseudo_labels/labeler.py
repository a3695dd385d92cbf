"""Runs a teacher clean over one shard of the unlabeled images and writes the shard.

Clean means inference mode: no augmentation (images get the teacher's evaluation
preprocessing only), no dropout, no stochastic depth, batch-norm moving statistics.
The unlabeled images are the train split outside the labeled subset, or a
separate source (--unlabeled_dataset); `StageData.unlabeled` says which.
"""

import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from nstudent.data.pipeline import preprocess_eval
from nstudent.evaluation import load_classifier
from nstudent.export.atomic import read_json
from nstudent.pseudo_labels.selection import filter_and_balance, harden, soften
from nstudent.pseudo_labels.shards import shard_is_complete, shard_paths, write_shard


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    hard: bool = False  # one-hot of the teacher's argmax instead of its probabilities
    temperature: float = 1.0
    min_confidence: float = 0.3
    per_class: int = 0  # K; 0: the mean count per class after filtering
    batch_size: int = 512

    def to_dict(self):
        return dataclasses.asdict(self)


def shard_indices(indices, shard_index, num_shards):
    """Every num_shards-th example: shards see the same class mix, so they balance alike."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index={shard_index} is outside [0, {num_shards}).")
    return np.asarray(indices)[shard_index::num_shards]


def teacher_logits(classifier, split, indices, batch_size, progress=""):
    """(logits, source indices) of the readable images at `indices`, in order, with
    progress lines; an unreadable file skipped on the way is simply not in the result."""
    size, crop = classifier.image_size, classifier.crop_fraction
    # uint8 to the model: a quarter of float32's host-to-device copy; it casts there
    ds = split.dataset(indices, with_index=True).map(
        lambda x, y, i: (preprocess_eval(x, size, crop), i),
        num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(2)
    out, kept, done, start, last = [], [], 0, time.time(), time.time()
    for images, index in ds.as_numpy_iterator():
        out.append(classifier.logits(images))
        kept.append(index)
        done += len(images)
        if time.time() - last > 10:
            last = time.time()
            logging.info("%s%d images labeled (%.0f img/s)", progress, done,
                         done / (last - start))
    if not out:
        return np.zeros((0, classifier.num_classes or 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(out), np.concatenate(kept)


def label_shard(classifier, stage_data, shard_index, num_shards, config, out_dir,
                settings):
    """Labels, filters and balances shard `shard_index`; writes it; returns its stats.

    K (config.per_class) is for the whole set: a shard keeps K / num_shards per
    class. `settings` identifies the run (teacher, data) and is stored with
    every shard so that shards of different runs are never mixed.
    """
    start = time.time()
    info = stage_data.info
    split, unlabeled = stage_data.unlabeled
    requested = shard_indices(unlabeled, shard_index, num_shards)
    if not len(requested):
        raise ValueError(f"Shard {shard_index} of {num_shards} has no unlabeled images "
                         f"({len(unlabeled)} in all).")
    where = f"shard {shard_index + 1}/{num_shards}: "
    logging.info("%slabeling %d images with %s", where, len(requested), classifier.path)
    logits, indices = teacher_logits(classifier, split, requested, config.batch_size, where)
    if not len(indices):
        raise ValueError(f"Shard {shard_index} of {num_shards}: none of its "
                         f"{len(requested)} images could be read.")
    seconds_labeling = time.time() - start
    confidence_probs = soften(logits, config.temperature)  # filter on the soft ones
    probs = harden(confidence_probs) if config.hard else confidence_probs
    per_class = -(-config.per_class // num_shards) if config.per_class > 0 else 0
    selection = filter_and_balance(confidence_probs, config.min_confidence, per_class)
    rows = selection.rows
    predicted = np.argmax(confidence_probs, axis=-1)

    # Write: the selected rows, each as often as it was chosen, in source order; the
    # source's encoded bytes where it has them (a folder's JPEGs), else PNG.
    copies = np.bincount(rows, minlength=len(indices))
    keep = np.flatnonzero(copies)
    if split.to_bytes is not None:
        encoded = split.dataset(indices[keep], encoded=True).map(lambda b, _: b)
    else:
        encoded = split.dataset(indices[keep]).map(
            lambda image, _: tf.io.encode_png(image), num_parallel_calls=tf.data.AUTOTUNE)
    repeated = (png for png, n in zip(encoded.as_numpy_iterator(), copies[keep])
                for _ in range(n))
    order = np.repeat(keep, copies[keep])
    stats = write_shard(out_dir, shard_index, num_shards, repeated, probs[order],
                        confidence_probs[order].max(axis=-1), indices[order], {
        "settings": settings, "num_classes": int(probs.shape[-1]),
        "channels": info.channels, "class_names": list(info.class_names),
        "images_in": int(len(requested)), "images_read": int(len(indices)),
        "min_confidence": config.min_confidence,
        "hard": config.hard, "temperature": config.temperature,
        "kept_after_filter": int(sum(selection.counts_filtered)),
        "distinct_images_written": int(len(keep)),
        "unreadable_skipped": int(len(requested) - len(indices)),
        "unreadable_first": split.skipped_files()[:10],
        **_agreement(split, indices, predicted, rows),
        "seconds_labeling": seconds_labeling,
        "images_per_second_labeling": len(indices) / max(seconds_labeling, 1e-9),
        **selection.stats()})
    if stats["unreadable_skipped"]:
        logging.warning("%sSkipped %d unreadable images (first: %s).", where,
                        stats["unreadable_skipped"], ", ".join(stats["unreadable_first"][:3]))
    agreement = stats.get("agreement_with_dataset_labels")
    logging.info("%s%d images in, %d pass --min_confidence=%g, %d written (K=%d per "
                 "class, %d distinct)%s; %.0f s", where, len(indices),
                 stats["kept_after_filter"], config.min_confidence, stats["records"],
                 selection.per_class, len(keep),
                 "" if agreement is None else
                 f"; teacher agrees with the dataset's labels on {100 * agreement:.1f}%",
                 time.time() - start)
    return stats


def _agreement(split, indices, predicted, rows):
    """How often the teacher agrees with the source's own (hidden) labels, where it has
    them: the train split's rest has, a separate unlabeled collection has not."""
    if not split.has_labels:
        return {}
    truth = split.labels[indices]
    return {"agreement_with_dataset_labels": float(np.mean(predicted == truth)),
            "agreement_after_selection": float(np.mean(predicted[rows] == truth[rows]))}


def teacher_settings(classifier, teacher_path, stage_data, config):
    """What makes a pseudo-label run itself; every shard stores it."""
    metrics = os.path.join(os.path.abspath(teacher_path), "metrics.json")
    params = (read_json(metrics).get("parameters") if os.path.exists(metrics) else
              classifier.keras_model.count_params() if classifier.keras_model else None)
    return {"teacher": os.path.abspath(teacher_path), "teacher_parameters": params,
            "dataset": stage_data.dataset, "split": stage_data.train.name,
            "unlabeled_dataset": stage_data.unlabeled_spec or None,
            "labels_per_class": stage_data.labels_per_class, "seed": stage_data.seed,
            **{k: v for k, v in config.to_dict().items() if k != "batch_size"}}


def label_shards(classifier, stage_data, shards, num_shards, config, out_dir, settings,
                 overwrite=False):
    """Labels each shard in `shards` unless it is already complete; returns all stats."""
    info = stage_data.info
    if classifier.num_classes is not None and classifier.num_classes != info.num_classes:
        raise ValueError(f"The teacher predicts {classifier.num_classes} classes but "
                         f"{info.name} has {info.num_classes}.")
    classifier.check_dataset(info)
    if not stage_data.unlabeled_count:
        raise ValueError(f"The unlabeled set is empty: every image of {info.name} is "
                         "labeled (lower --labels_per_class, or give a separate collection "
                         "with --unlabeled_dataset).")
    all_stats = []
    for i in shards:
        if shard_is_complete(out_dir, i, num_shards) and not overwrite:
            stats = read_json(shard_paths(out_dir, i, num_shards)[1])
            if stats["settings"] != settings:
                raise ValueError(
                    f"Shard {i} of {num_shards} in {out_dir!r} was made with other "
                    f"settings ({stats['settings']}); use another output folder or "
                    "--overwrite.")
            logging.info("Shard %d of %d is already complete; skipped.", i, num_shards)
        else:
            stats = label_shard(classifier, stage_data, i, num_shards, config, out_dir,
                                settings)
        all_stats.append(stats)
    return all_stats


def pseudo_label(teacher_path, stage_data, config, out_dir, shards=None, num_shards=1,
                 overwrite=False):
    """The whole stage: a teacher (run folder, .keras or SavedModel) labels the
    unlabeled images of `stage_data` into `out_dir`; returns each shard's stats."""
    classifier = load_classifier(teacher_path)
    settings = teacher_settings(classifier, teacher_path, stage_data, config)
    return label_shards(classifier, stage_data,
                        range(num_shards) if shards is None else shards, num_shards,
                        config, out_dir, settings, overwrite=overwrite)
