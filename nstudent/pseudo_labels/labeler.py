"""Phase 1: a teacher labels one shard of the unlabeled images, chunk by chunk.

Clean means inference mode: no augmentation (images get the teacher's evaluation
preprocessing only), no dropout, no stochastic depth, batch-norm moving
statistics. The unlabeled images are the train split outside the labeled subset,
or a separate source (--unlabeled_dataset); `StageData.unlabeled` says which.
What a shard keeps per image (store.py) is all that selection (phase 2, writer.py)
needs; memory holds one chunk, and a killed shard resumes at its last chunk.
"""

import dataclasses
import os
import time

import numpy as np
from absl import logging

from nstudent import ranges
from nstudent.errors import InputError
from nstudent.export.atomic import read_json
from nstudent.pseudo_labels.inference import TeacherInference
from nstudent.pseudo_labels.selection import soften
from nstudent.pseudo_labels.store import LabelShard, chunk_rows, shard_rows

# Settings that only the selection phase uses: changing them re-selects without
# labeling again.
SELECTION_KEYS = ("hard", "min_confidence", "per_class", "max_copies", "balance",
                  "calibration", "calibration_temperature", "min_precision",
                  "min_precision_count", "held_out", "positive_threshold",
                  "negative_threshold", "multilabel_entries")

# confident: UPS's masked entries; all and top_class: the baselines it is measured
# against (every entry hard at 0.5; the top class positive, every other negative)
MULTILABEL_ENTRIES = ("confident", "all", "top_class")


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    hard: bool = False  # one-hot of the teacher's argmax instead of its probabilities
    temperature: float = 1.0
    min_confidence: float = 0.3
    per_class: int = 0  # K; 0: the mean count per class after filtering
    max_copies: int = 0  # no image repeated more often by balancing; 0: no limit
    balance: bool = True  # False: every image above min_confidence once (no K)
    calibration: str = "none"  # temperature: confidence and labels at the teacher's T
    min_precision: float = 0.0  # > 0: per-class cut-offs from held-out precision
    min_precision_count: int = 20  # held-out predictions a class needs for its own
    to_label: int = 0  # > 0: to_label.csv, the images with the smallest top-2 margins
    positive_threshold: float = 0.7  # multi-label: a confident positive at p >= this
    negative_threshold: float = 0.05  # multi-label: a confident negative at p <= this
    # multi-label: confident (masked), or a baseline: every entry at 0.5 / top class only
    multilabel_entries: str = "confident"
    batch_size: int = 512
    chunk_size: int = 16384  # images per resumable chunk of a shard

    def __post_init__(self):
        ranges.check_fields(self, "temperature", "per_class", "max_copies",
                            "min_confidence", "min_precision", "to_label",
                            "min_precision_count", label_batch_size="batch_size",
                            label_chunk_size="chunk_size")
        if not 0 <= self.negative_threshold < self.positive_threshold <= 1:
            raise InputError(f"--positive_threshold ({self.positive_threshold}) must be "
                             f"above --negative_threshold ({self.negative_threshold}), "
                             "both in [0, 1].")
        if self.multilabel_entries not in MULTILABEL_ENTRIES:
            raise InputError(f"--multilabel_entries must be one of "
                             f"{', '.join(MULTILABEL_ENTRIES)}, got "
                             f"{self.multilabel_entries!r}.")
        if self.calibration not in ("none", "temperature"):
            raise InputError(f"--calibration must be none or temperature, got "
                             f"{self.calibration!r}.")

    def to_dict(self):
        return dataclasses.asdict(self)


def teacher_settings(classifier, teacher_path, stage_data, config, num_shards=1):
    """What makes a pseudo-label run itself; stored with every shard and the result.
    The teacher is its weights digest; its path is information (store.identity)."""
    metrics = os.path.join(os.path.abspath(teacher_path), "metrics.json")
    params = (read_json(metrics).get("parameters") if os.path.exists(metrics) else
              classifier.keras_model.count_params() if classifier.keras_model else None)
    if config.calibration == "temperature" and classifier.temperature == 1.0:
        raise InputError(f"--calibration=temperature: the teacher {teacher_path!r} has no "
                         "calibration temperature (model_info.json); train it with "
                         "--calibration=temperature, or pass --calibration=none.")
    held_out = None
    if config.min_precision:
        held_out = check_held_out(classifier, teacher_path, stage_data)
    return {"teacher": os.path.abspath(teacher_path), "teacher_digest": classifier.digest,
            "teacher_parameters": params,
            "calibration_temperature": (classifier.temperature
                                        if config.calibration == "temperature" else 1.0),
            "held_out": held_out,
            "task": getattr(stage_data.info, "task", "multiclass"),
            "dataset": stage_data.dataset, "split": stage_data.train.name,
            "unlabeled_dataset": stage_data.unlabeled_spec or None,
            "labels_per_class": stage_data.labels_per_class, "seed": stage_data.seed,
            **({"drop_empty_classes": True} if stage_data.info.dropped_classes else {}),
            "num_shards": num_shards,
            **{k: v for k, v in config.to_dict().items()
               if k not in ("batch_size", "to_label")}}


def labeling_settings(settings):
    return {k: v for k, v in settings.items() if k not in SELECTION_KEYS}


def check_held_out(classifier, teacher_path, stage_data):
    """The labeled images held out from the teacher's training, as this stage would
    hold them out: refused when the teacher trained on them, or cannot say."""
    mine = stage_data.held_out()
    theirs = (classifier.info or {}).get("held_out")
    if not mine["examples"]:
        raise InputError("--min_precision measures the teacher's precision on labeled "
                         "images held out from its training: set --validation_fraction "
                         "as the teacher was trained with it.")
    if theirs is None:
        raise InputError(f"--min_precision: {teacher_path!r} does not record which "
                         "labeled images it held out (model_info.json 'held_out'); it may "
                         "have trained on them. Train it again with --validation_fraction.")
    if theirs != mine:
        raise InputError(f"--min_precision: the teacher held out {theirs}, this stage "
                         f"would measure on {mine}; the teacher trained on some of those "
                         "images. Use the teacher's --labels_per_class, --seed and "
                         "--validation_fraction.")
    return mine


def label_shard(inference, stage_data, shard, config, settings, overwrite=False):
    """Labels `shard` (a store.LabelShard) chunk by chunk, resuming after the chunks
    already on disk; returns the shard's stats."""
    if shard.complete and not overwrite:
        shard.check(labeling_settings(settings))
        logging.info("Shard %d of %d is already labeled; skipped.", shard.index,
                     shard.num_shards)
        return shard.stats()
    split, unlabeled = stage_data.unlabeled
    requested = shard_rows(unlabeled, shard.index, shard.num_shards)
    if not len(requested):
        raise InputError(f"Shard {shard.index} of {shard.num_shards} has no unlabeled "
                         f"images ({len(unlabeled)} in all); use fewer shards.")
    done = shard.start(labeling_settings(settings), overwrite)
    num_chunks = -(-len(requested) // config.chunk_size)
    where = f"shard {shard.index + 1}/{shard.num_shards}: "
    if done:
        first = min(set(range(num_chunks)) - set(done), default=num_chunks)
        logging.info("%sresuming at chunk %d of %d (%d chunks already on disk).", where,
                     first + 1, num_chunks, len(done))
    logging.info("%slabeling %d images in %d chunks with %s", where, len(requested),
                 num_chunks, settings["teacher"])
    start, labeled, last_log = time.time(), 0, 0.0
    todo = [j for j in range(num_chunks) if j not in done]
    size = config.chunk_size
    rows = np.concatenate([chunk_rows(requested, j, size) for j in todo] or
                          [np.zeros(0, np.int64)])
    blocks = inference.stream(split, rows, images_per_call=size)
    classes = stage_data.info.num_classes
    for j, logits, index, skipped in _chunks(blocks, todo, requested, size, split, classes):
        if not np.isfinite(logits).all():
            raise InputError(f"The teacher {settings['teacher']} gives non-finite logits.")
        probs = soften(logits, config.temperature)
        asked = len(chunk_rows(requested, j, size))
        shard.write_chunk(j, index, logits, probs.argmax(-1), probs.max(-1), skipped, asked)
        labeled += asked
        if time.time() - last_log > 10 or j == todo[-1]:
            last_log = time.time()
            logging.info("%schunk %d/%d done, %d images this run (%.0f img/s)", where,
                         j + 1, num_chunks, labeled, labeled / (last_log - start))
    seconds = time.time() - start
    stats = _shard_stats(shard, num_chunks, labeling_settings(settings),
                         stage_data.info.num_classes)
    stats.update(seconds_labeling_this_run=seconds,
                 images_per_second_this_run=labeled / max(seconds, 1e-9))
    shard.finish(stats)
    if stats["unreadable_skipped"]:
        logging.warning("%sSkipped %d unreadable images (first: %s).", where,
                        stats["unreadable_skipped"], ", ".join(stats["unreadable_first"][:3]))
    return stats


def _chunks(blocks, todo, requested, size, split, num_classes):
    """Regroups the teacher's output blocks by chunk: yields (chunk, logits, source
    indices, unreadable files met since the last chunk) for each chunk in `todo`, as
    soon as a later row (or the end) shows that the chunk has all it will get."""
    pending_logits, pending_index, seen = [], [], set()
    todo = list(todo)

    def take(j):
        end = min((j + 1) * size, len(requested))
        logits = np.concatenate(pending_logits) if pending_logits else None
        index = np.concatenate(pending_index) if pending_index else np.zeros(0, np.int64)
        mine = np.searchsorted(requested, index) < end
        pending_logits[:] = [] if logits is None or mine.all() else [logits[~mine]]
        pending_index[:] = [] if mine.all() else [index[~mine]]
        skipped = [p for p in split.skipped_files() if p not in seen]
        seen.update(skipped)
        empty = np.zeros((0, num_classes), np.float32)
        return j, (logits[mine] if logits is not None else empty), index[mine], skipped

    for logits, index in blocks:
        pending_logits.append(logits)
        pending_index.append(index)
        last = int(np.searchsorted(requested, index[-1]))
        while todo and last >= min((todo[0] + 1) * size, len(requested)) - 1:
            yield take(todo.pop(0))
    while todo:
        yield take(todo.pop(0))


def _shard_stats(shard, num_chunks, settings, num_classes):
    """Totals over the shard's chunks (also those of an earlier, killed run)."""
    requested = read = 0
    skipped, predicted = [], np.zeros(num_classes, np.int64)
    for j in range(num_chunks):
        chunk = shard.read_chunk(j, ("predicted", "skipped", "requested"))
        requested += int(chunk["requested"])
        read += len(chunk["predicted"])
        skipped.extend(p for p in chunk["skipped"].tolist() if p not in skipped)
        predicted += np.bincount(chunk["predicted"], minlength=num_classes)
    return {"settings": settings, "shard_index": shard.index,
            "num_shards": shard.num_shards, "chunks": num_chunks,
            "images_in": requested, "images_read": read,
            "unreadable_skipped": requested - read, "unreadable_first": skipped[:10],
            "counts_predicted": predicted.tolist()}


def check_teacher(classifier, stage_data):
    info = stage_data.info
    task = getattr(info, "task", "multiclass")
    teacher_task = (classifier.info or {}).get("task", "multiclass")
    if teacher_task != task:
        raise InputError(f"The teacher {classifier.path!r} is a {teacher_task} classifier; "
                         f"this run's data is {task} (--task).")
    if classifier.num_classes is not None and classifier.num_classes != info.num_classes:
        raise InputError(f"The teacher predicts {classifier.num_classes} classes but "
                         f"{info.name} has {info.num_classes}.")
    classifier.check_dataset(info)
    if not stage_data.unlabeled_count:
        raise InputError(f"The unlabeled set is empty: every image of {info.name} is "
                         "labeled (lower --labels_per_class, or give a separate collection "
                         "with --unlabeled_dataset).")


def label_shards(classifier, stage_data, shards, num_shards, config, out_dir, settings,
                 overwrite=False):
    """Phase 1 for each shard index in `shards`; returns their stats."""
    check_teacher(classifier, stage_data)
    if num_shards > stage_data.unlabeled_count:
        raise InputError(f"--num_shards={num_shards} is more than the "
                         f"{stage_data.unlabeled_count} unlabeled images.")
    inference = TeacherInference(classifier, config.batch_size)
    return [label_shard(inference, stage_data, LabelShard(out_dir, i, num_shards), config,
                        settings, overwrite) for i in shards]
