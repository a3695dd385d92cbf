"""Phase 2: one global balance over every labeled shard, then the shards written.

Runs once every shard of phase 1 is labeled. K and each class's cut-off come
from all shards' chunks (selection.balance), so 1 shard or N select the same
images with the same copies. Each label shard then becomes one output shard
(shards.py): its selected images, stored once with their copy count, in a
seeded random order made by an external shuffle (records go to random bucket
files, each bucket is permuted in memory), so memory holds one bucket, not the
shard. Last comes stats.json, with a per-class table in the log.
"""

import csv
import dataclasses
import itertools
import math
import os
import shutil
import time

import numpy as np
import tensorflow as tf
from absl import logging

from nstudent.export.atomic import atomic_path, read_json, write_json
from nstudent.pseudo_labels.labeler import labeling_settings
from nstudent.pseudo_labels.selection import WARN_COPIES, balance, soften
from nstudent.pseudo_labels.shards import (
    STATS, example, output_is_complete, output_paths)
from nstudent.pseudo_labels.store import (ShardError, all_shards, same_settings,
                                          settings_difference)

BUCKET_RECORDS = 4096  # records per shuffle bucket (memory: one bucket)
MAX_BUCKETS = 256


def missing_shards(out_dir, num_shards):
    return [s.index for s in all_shards(out_dir, num_shards) if not s.complete]


def check_labeled(out_dir, num_shards, settings):
    """The label shards, all complete and made by this teacher with these settings."""
    shards = all_shards(out_dir, num_shards)
    missing = [s for s in shards if not s.complete]
    if missing:
        def state(s):
            n = len(s.finished_chunks()) if os.path.isdir(s.dir) else 0
            return f"shard {s.index} ({f'{n} chunks so far' if n else 'not started'})"

        raise ShardError(
            f"Selection needs every shard labeled; {len(missing)} of {num_shards} are not: "
            f"{', '.join(state(s) for s in missing[:5])}. Run tools/pseudo_label.py "
            f"--phase=label --out={out_dir} --num_shards={num_shards} "
            f"--shard_index={missing[0].index} (and the others), with the same flags.")
    wanted = labeling_settings(settings)
    for s in shards:
        stored = s.stats()["settings"]
        if not same_settings(stored, wanted):
            raise ShardError(
                f"Shard {s.index} in {out_dir!r} was labeled by another teacher or with "
                f"other settings ({settings_difference(stored, wanted)}); label again "
                "with --overwrite, or use another --out.")
    return shards


def open_selection(out_dir, settings, overwrite):
    """(label shards, None) to select from, or (None, stats) where a finished
    selection with these settings stands (and `overwrite` is off)."""
    shards = check_labeled(out_dir, settings["num_shards"], settings)
    previous = previous_selection(out_dir, settings["num_shards"], settings, overwrite)
    if previous is not None:
        logging.info("The selection in %s is already done; skipped.", out_dir)
        return None, previous
    return shards, None


def previous_selection(out_dir, num_shards, settings, overwrite):
    """The finished selection with these settings, if any; removes another one when
    `overwrite`, else refuses to mix."""
    path = os.path.join(out_dir, STATS)
    if not os.path.exists(path):
        return None
    stats = read_json(path)
    same = same_settings(stats["settings"], settings) and all(
        output_is_complete(out_dir, i, num_shards) for i in range(num_shards))
    if same and not overwrite:
        return stats
    if not overwrite:
        raise ShardError(f"{out_dir!r} holds a selection made with other settings; use "
                         "--overwrite to select again, or another --out.")
    os.remove(path)
    return None


@dataclasses.dataclass
class Cut:
    """What decides which images pass: the cut-off (one, or one per class from
    --min_precision) on the confidence, recomputed from the stored logits at the
    teacher's calibration temperature (times --temperature) when it has one, so a
    changed calibration selects again without labeling again."""

    threshold: object  # float, or float64 [classes]
    calibration: float = 1.0  # the teacher's T; 1: the confidence as labeled
    temperature: float = 1.0  # --temperature

    def chunks(self, shard, fields=("index", "predicted", "confidence")):
        if self.calibration == 1.0:
            yield from shard.chunks(fields)
            return
        for chunk in shard.chunks(tuple(dict.fromkeys((*fields, "logits")))):
            chunk["confidence"] = soften(chunk["logits"],
                                         self.temperature * self.calibration).max(-1)
            yield chunk

    def of_class(self, c):
        return float(self.threshold if np.ndim(self.threshold) == 0 else self.threshold[c])

    def describe(self):
        return (f"--min_confidence={self.threshold:g}" if np.ndim(self.threshold) == 0
                else "the per-class cut-offs of --min_precision")


def select(stage_data, config, out_dir, settings, overwrite=False, cutoffs=None):
    """Balances globally and writes every output shard and stats.json; returns the
    stats. `cutoffs`: per-class ClassCutoffs (--min_precision) instead of
    --min_confidence."""
    shards, previous = open_selection(out_dir, settings, overwrite)
    if previous is not None:
        return previous
    start = time.time()
    info = stage_data.info
    split, _ = stage_data.unlabeled
    names = list(info.class_names)

    cut = Cut(config.min_confidence if cutoffs is None else
              np.array([c.cutoff for c in cutoffs], np.float64),
              settings.get("calibration_temperature") or 1.0, config.temperature)

    def read():
        return itertools.chain.from_iterable(cut.chunks(s) for s in shards)

    plan = balance(read, info.num_classes, cut.threshold, config.per_class,
                   config.max_copies, config.balance)
    empty = [names[c] for c in np.flatnonzero(plan.candidates == 0)]
    if empty:
        logging.warning("%s leaves no image of class(es) %s; they stay empty in the "
                        "pseudo-labeled set.", cut.describe(), ", ".join(empty))
    _warn_copies(plan, names, config.max_copies)
    totals = _Totals(info.num_classes)
    for s in shards:
        _write_output(split, s, plan, config, out_dir, settings, totals, cut)
    shard_stats = [s.stats() for s in shards]
    stats = {
        "settings": settings, "num_classes": info.num_classes, "channels": info.channels,
        "class_names": names, "per_class": plan.per_class,
        "min_confidence": config.min_confidence, "hard": config.hard,
        "max_copies": config.max_copies, "balance": config.balance,
        "temperature": config.temperature, "calibration_temperature": cut.calibration,
        "min_precision": config.min_precision,
        "precision_cutoffs": None if cutoffs is None else [
            dict(dataclasses.asdict(c), cutoff=_finite(c.cutoff), **{"class": n})
            for c, n in zip(cutoffs, names)],
        "images_in": sum(s["images_in"] for s in shard_stats),
        "images_read": sum(s["images_read"] for s in shard_stats),
        "unreadable_skipped": sum(s["unreadable_skipped"] for s in shard_stats),
        "unreadable_first": [p for s in shard_stats for p in s["unreadable_first"]][:10],
        "above_threshold": int(plan.candidates.sum()),
        # each image is written once with its copies: `records` (kept one release, an
        # alias) counts the copies, as `examples_with_copies` says
        "distinct_images": int(totals.selected.sum()),
        "records_written": int(totals.selected.sum()),
        "examples_with_copies": int(totals.copies.sum()), "records": int(totals.copies.sum()),
        "classes": totals.per_class(names, plan, cut),
        "seconds_selecting": time.time() - start,
        **_agreement(split, read, info.num_classes)}
    stats["pictures"] = _pictures(split, shards, plan, cut, names, out_dir, stats)
    write_json(os.path.join(out_dir, STATS), stats)
    logging.info("Pseudo-labels: %d of %d images pass %s, %s, "
                 "%d distinct images written as %d records with copies.\n%s",
                 stats["above_threshold"], stats["images_read"], cut.describe(),
                 f"K={plan.per_class} per class" if plan.per_class else "not balanced",
                 stats["distinct_images"], stats["records"], class_table(stats))
    return stats


def _pictures(split, shards, plan, cut, names, out_dir, stats):
    """The contact sheets of the selection (sheets.py); returns their folder."""
    from nstudent.pseudo_labels import sheets

    parts = {"predicted": [], "confidence": [], "index": [], "kept": []}
    for shard in shards:
        for chunk in cut.chunks(shard):
            kept = plan.copies(chunk["predicted"], chunk["confidence"], chunk["index"],
                               cut.threshold) > 0
            for key, value in (("predicted", chunk["predicted"]),
                               ("confidence", chunk["confidence"]),
                               ("index", chunk["index"]), ("kept", kept)):
                parts[key].append(value)
    rows = {k: np.concatenate(v) for k, v in parts.items()}
    chosen = sheets.choose(rows["predicted"].astype(np.int64), rows["confidence"],
                           rows["index"], rows["kept"], len(names))
    sheets.write_sheets(split, chosen, names, out_dir,
                        [sheets.heading(n, r["cutoff"]) for n, r in zip(names, stats["classes"])])
    return os.path.join(out_dir, sheets.SHEETS)


TO_LABEL = "to_label.csv"


def write_to_label(stage_data, out_dir, settings, config, count):
    """<out_dir>/to_label.csv: the `count` unlabeled images the teacher is least sure
    of, by the margin between its two most probable classes (at the selection's
    temperature), smallest first (ties: the lower index). Images that look alike get
    alike margins, so near-duplicates may sit side by side. Returns the path."""
    split, _ = stage_data.unlabeled
    names = list(stage_data.info.class_names)
    shards = check_labeled(out_dir, settings["num_shards"], settings)
    cut = Cut(config.min_confidence, settings.get("calibration_temperature") or 1.0,
              config.temperature)
    best = None  # (margin, index, top2 classes, top2 probabilities), at most `count`
    for shard in shards:
        for chunk in cut.chunks(shard, ("index", "logits")):
            probs = soften(chunk["logits"], config.temperature * cut.calibration)
            top = np.argsort(-probs, axis=1, kind="stable")[:, :2]
            p = np.take_along_axis(probs, top, axis=1)
            rows = (p[:, 0] - p[:, 1], chunk["index"], top, p)
            if best is not None:
                rows = tuple(np.concatenate([a, b]) for a, b in zip(best, rows))
            order = np.lexsort((rows[1], rows[0]))[:count]
            best = tuple(a[order] for a in rows)
    path = os.path.join(out_dir, TO_LABEL)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "index", "margin", "class_1", "probability_1",
                             "class_2", "probability_2"])
            for margin, index, top, p in zip(*best):
                image = split.paths[index] if split.paths is not None else int(index)
                writer.writerow([image, int(index), f"{margin:.6f}", names[top[0]],
                                 f"{p[0]:.6f}", names[top[1]], f"{p[1]:.6f}"])
    logging.info("Wrote the %d images to label next (smallest margins %.4f-%.4f) to %s.",
                 len(best[0]), best[0][0], best[0][-1], path)
    return path


def _finite(value):
    """JSON has no infinity: a class that keeps no image has the cut-off None."""
    return value if math.isfinite(value) else None


class _Totals:
    """Per-class counts of what was written, over all output shards."""

    def __init__(self, num_classes):
        self.selected = np.zeros(num_classes, np.int64)
        self.copies = np.zeros(num_classes, np.int64)
        self.correct = np.zeros(num_classes, np.int64)
        self.lowest = np.full(num_classes, np.inf)
        self.has_truth = False

    def add(self, predicted, copies, confidence, truth):
        n = len(self.selected)
        self.selected += np.bincount(predicted, minlength=n)
        self.copies += np.bincount(predicted, weights=copies, minlength=n).astype(np.int64)
        np.minimum.at(self.lowest, predicted, confidence)
        if truth is not None:
            self.has_truth = True
            self.correct += np.bincount(predicted[predicted == truth], minlength=n)

    def per_class(self, names, plan, cut):
        rows = []
        for c, name in enumerate(names):
            truncated = plan.per_class and plan.candidates[c] > plan.per_class
            row = {"class": name, "predicted": int(plan.predicted[c]),
                   "above_threshold": int(plan.candidates[c]),
                   "selected": int(self.selected[c]), "copies": int(self.copies[c]),
                   "most_copies_of_an_image": int(plan.most_copies[c]),
                   # K less what was written: left unfilled by --max_copies
                   "quota_unfilled": int(plan.unfilled[c]),
                   # the lowest confidence kept where K cut the class, else the filter's
                   "cutoff": _finite(float(self.lowest[c]) if truncated
                                     else cut.of_class(c))}
            if self.has_truth:
                row["accuracy_selected"] = (float(self.correct[c] / self.selected[c])
                                            if self.selected[c] else None)
            rows.append(row)
        return rows


def _warn_copies(plan, names, max_copies):
    """Names the classes whose images balancing repeats more than WARN_COPIES times
    (a handful of images then fill much of every pseudo-labeled batch)."""
    heavy = np.flatnonzero(plan.most_copies > WARN_COPIES)
    if len(heavy):
        logging.warning(
            "Balancing repeats images up to %s times (K=%d): %s. Pass --max_copies to cap "
            "it (the rest of such a class's quota stays unfilled), or a lower "
            "--min_confidence or --per_class.", int(plan.most_copies.max()), plan.per_class,
            ", ".join(f"{names[c]} ({int(plan.candidates[c])} images)" for c in heavy))
    capped = np.flatnonzero(plan.unfilled > 0)
    if max_copies and len(capped):
        logging.info("--max_copies=%d leaves %s quota unfilled.", max_copies, ", ".join(
            f"{names[c]}'s {int(plan.unfilled[c])} of {plan.per_class}" for c in capped))


def _agreement(split, read, num_classes):
    """The teacher's agreement with the source's own (hidden) labels, where it has them."""
    if not split.has_labels:
        return {}
    correct = total = 0
    for chunk in read():
        correct += int(np.sum(chunk["predicted"] == split.labels[chunk["index"]]))
        total += len(chunk["index"])
    return {"agreement_with_dataset_labels": correct / max(total, 1)}


def _selected_rows(shard, plan, cut):
    """index, copies, predicted, confidence of the shard's selected rows, in order."""
    parts = {"index": [], "copies": [], "predicted": [], "confidence": []}
    for chunk in cut.chunks(shard):
        n = plan.copies(chunk["predicted"], chunk["confidence"], chunk["index"],
                        cut.threshold)
        chunk["copies"] = n
        for key, values in parts.items():
            values.append(chunk[key][n > 0])
    return {key: np.concatenate(values) for key, values in parts.items()}


def _labels(shard, plan, config, cut):
    """(index, label, confidence, class, copies) of each selected row, in order."""
    for chunk in cut.chunks(shard, ("index", "predicted", "confidence", "logits")):
        n = plan.copies(chunk["predicted"], chunk["confidence"], chunk["index"],
                        cut.threshold)
        keep = n > 0
        labels = soften(chunk["logits"][keep], config.temperature * cut.calibration,
                        config.hard)
        yield from zip(chunk["index"][keep], labels, chunk["confidence"][keep],
                       chunk["predicted"][keep], n[keep])


def _images(split, indices, batch=1024):
    """numpy batches of (encoded image, source index) at `indices` (sorted): the
    source's own bytes, or PNGs of its pixels (batched: Python pays per batch)."""
    if not len(indices):
        return
    if split.to_bytes is not None:
        ds = split.dataset(indices, encoded=True, with_index=True)
        ds = ds.map(lambda b, y, i: (b, i))
    else:
        ds = split.dataset(indices, with_index=True).map(
            lambda x, y, i: (tf.io.encode_png(x), i), num_parallel_calls=tf.data.AUTOTUNE)
    yield from ds.batch(batch).prefetch(2).as_numpy_iterator()


def write_shuffled(split, shard, index, record_of, out_dir, settings):
    """Label shard -> its output shard: the images at the sorted source indices
    `index`, each serialised by `record_of(encoded image, source index)`, in a seeded
    order made by an external shuffle (random bucket files, each permuted in memory).
    Returns the record file's path; its stats are the caller's to write."""
    record_path, _ = output_paths(out_dir, shard.index, shard.num_shards)
    rng = np.random.default_rng([settings["seed"], shard.index, shard.num_shards])
    buckets = int(np.clip(math.ceil(len(index) / BUCKET_RECORDS), 1, MAX_BUCKETS))
    bucket_of = rng.integers(buckets, size=len(index))
    scratch = os.path.join(out_dir, f".shuffle-{shard.index:05d}")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    writers = [tf.io.TFRecordWriter(os.path.join(scratch, f"{b}.tfrecord"))
               for b in range(buckets)]
    for images, indices in _images(split, index):
        for image, i, b in zip(images, indices, bucket_of[:len(indices)]):
            writers[b].write(record_of(image, int(i)))
        bucket_of = bucket_of[len(indices):]
    for w in writers:
        w.close()
    with atomic_path(record_path) as tmp:
        with tf.io.TFRecordWriter(tmp) as out:
            for b in range(buckets):
                records = [r for batch in tf.data.TFRecordDataset(
                    os.path.join(scratch, f"{b}.tfrecord")).batch(BUCKET_RECORDS)
                    .as_numpy_iterator() for r in batch]
                for k in rng.permutation(len(records)):
                    out.write(records[k])
    shutil.rmtree(scratch, ignore_errors=True)
    return record_path


def write_shard_stats(out_dir, shard, settings, distinct, records):
    record_path, stats_path = output_paths(out_dir, shard.index, shard.num_shards)
    write_json(stats_path, {
        "settings": settings, "shard_index": shard.index, "num_shards": shard.num_shards,
        "distinct_images": int(distinct), "records_written": int(distinct),
        "examples_with_copies": int(records), "records": int(records),
        "tfrecord": os.path.basename(record_path), "bytes": os.path.getsize(record_path)})


def _write_output(split, shard, plan, config, out_dir, settings, totals, cut):
    """Label shard -> output shard: the selected images with their labels and copies."""
    rows = _selected_rows(shard, plan, cut)
    index, copies = rows["index"], rows["copies"]
    truth = split.labels if split.has_labels else None
    rows_out = _labels(shard, plan, config, cut)

    def record_of(image, i):
        j, label, confidence, predicted, n = next(rows_out)
        if i != j:
            raise RuntimeError(f"Source row {i} read where {j} was selected.")
        return example(image, label.tolist(), float(confidence), int(predicted), int(j),
                       int(n))

    write_shuffled(split, shard, index, record_of, out_dir, settings)
    totals.add(rows["predicted"].astype(np.int64), copies, rows["confidence"],
               None if truth is None else truth[index])
    write_shard_stats(out_dir, shard, settings, len(index), copies.sum())


def class_table(stats):
    """A short per-class table of a selection's stats.json."""
    head = "| class | predicted | above threshold | selected | copies | cut-off |"
    accuracy = any("accuracy_selected" in r for r in stats["classes"])
    if accuracy:
        head += " teacher accuracy (selected) |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in stats["classes"]:
        line = (f"| {r['class']} | {r['predicted']} | {r['above_threshold']} | "
                f"{r['selected']} | {r['copies']} | "
                f"{'none kept' if r['cutoff'] is None else format(r['cutoff'], '.3f')} |")
        if accuracy:
            a = r.get("accuracy_selected")
            line += " - |" if a is None else f" {a:.3f} |"
        lines.append(line)
    return "\n".join(lines)
