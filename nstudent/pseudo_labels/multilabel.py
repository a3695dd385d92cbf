"""Multi-label pseudo-labels: per image and class, a confident positive, a confident
negative, or nothing (masked out of the student's loss), after UPS (Rizve et al.,
2021) without its uncertainty gate.

A sigmoid per class at --temperature: positive when p >= --positive_threshold,
negative when p <= --negative_threshold, else masked. An image with no confident
entry is dropped; every other is written once (duplicating an image to balance a
rare class would repeat its co-occurring labels too), and stats.json carries
per-class loss weights that balance the confident positives instead. The targets
are p (soft) or 0/1 (--hard_labels) and the records carry the mask (shards.py).
Selection reads the stored logits only, so new thresholds re-select without
labeling again. Per class, pictures/<class>.png shows the most probable positives,
the positives nearest the cut-off and the most probable images left out of them.
"""

import time

import numpy as np
from absl import logging

from nstudent.evaluation.multilabel import sigmoid
from nstudent.export.atomic import write_json
from nstudent.pseudo_labels import sheets
from nstudent.pseudo_labels.shards import STATS, example
from nstudent.pseudo_labels.writer import (open_selection, write_shard_stats,
                                           write_shuffled)


def confident_entries(logits, positive_threshold, negative_threshold, temperature=1.0,
                      hard=False):
    """(targets float32 [n, C], mask float32 [n, C], probabilities float64)."""
    p = sigmoid(logits, temperature)
    positive, negative = p >= positive_threshold, p <= negative_threshold
    targets = positive.astype(np.float32) if hard else p.astype(np.float32)
    return targets, (positive | negative).astype(np.float32), p


def entries(logits, config):
    """(targets, mask, positive: bool [n, C], p: the sigmoids at --temperature) of a
    LabelConfig's `multilabel_entries`:
    the confident entries, or a baseline with nothing masked (every entry hard at
    0.5, or the teacher's top class alone positive)."""
    if config.multilabel_entries == "confident":
        targets, mask, p = confident_entries(
            logits, config.positive_threshold, config.negative_threshold,
            config.temperature, config.hard)
        return targets, mask, p >= config.positive_threshold, p
    p = sigmoid(logits, config.temperature)
    if config.multilabel_entries == "all":
        positive = p >= 0.5
    else:  # top_class
        positive = np.eye(p.shape[1], dtype=bool)[p.argmax(axis=1)]
    return positive.astype(np.float32), np.ones_like(p, np.float32), positive, p


def class_weights(positives):
    """Per-class loss weights that give every class's confident positives the same
    total weight: mean(positives) / positives (0 for a class without any)."""
    positives = np.asarray(positives, np.float64)
    present = positives > 0
    weights = np.zeros_like(positives)
    if present.any():
        weights[present] = positives[present].mean() / positives[present]
    return weights


class _Counts:
    """Per class: confident positives, negatives and masked entries of the kept
    images, and against the source's own labels (where it has them) how many of the
    confident entries are right, and how many true positives there were."""

    def __init__(self, num_classes):
        (self.positives, self.negatives, self.masked, self.true_positives,
         self.true_negatives, self.actual_positives, self.actual_negatives) = (
            np.zeros((7, num_classes), np.int64))
        self.images = 0
        self.has_truth = False

    def add(self, targets_hard, mask, truth):
        confident = mask > 0
        positive = confident & (targets_hard > 0)
        negative = confident & ~(targets_hard > 0)
        self.positives += positive.sum(0)
        self.negatives += negative.sum(0)
        self.masked += (~confident).sum(0)
        self.images += len(mask)
        if truth is not None:
            self.has_truth = True
            truth = truth > 0
            self.true_positives += (positive & truth).sum(0)
            self.true_negatives += (negative & ~truth).sum(0)

    def add_all(self, truth):
        """Every scanned image's own labels (recall's denominators)."""
        self.actual_positives += (truth > 0).sum(0)
        self.actual_negatives += (truth <= 0).sum(0)

    def rows(self, names):
        def share(a, b):
            return float(a / b) if b else None

        rows = []
        for c, name in enumerate(names):
            row = {"class": name, "positives": int(self.positives[c]),
                   "negatives": int(self.negatives[c]), "masked": int(self.masked[c])}
            if self.has_truth:
                row.update(
                    positive_precision=share(self.true_positives[c], self.positives[c]),
                    positive_recall=share(self.true_positives[c], self.actual_positives[c]),
                    negative_precision=share(self.true_negatives[c], self.negatives[c]),
                    negative_recall=share(self.true_negatives[c],
                                          self.actual_negatives[c]))
            rows.append(row)
        return rows


def select_multilabel(stage_data, config, out_dir, settings, overwrite=False):
    """Phase 2 for a multi-label teacher: writes every output shard and stats.json;
    returns the stats."""
    shards, previous = open_selection(out_dir, settings, overwrite)
    if previous is not None:
        return previous
    start = time.time()
    info = stage_data.info
    names = list(info.class_names)
    split, _ = stage_data.unlabeled
    truth = split.labels if split.has_labels and split.labels.ndim == 2 else None
    counts = _Counts(info.num_classes)
    images_read = 0
    c = info.num_classes  # the sheets' candidates, from every chunk
    shown = {"probabilities": [np.zeros((0, c))], "positive": [np.zeros((0, c), bool)],
             "index": [np.zeros(0, np.int64)]}
    for shard in shards:
        kept = {"index": [], "targets": [], "mask": [], "confidence": [], "class": []}
        for chunk in shard.chunks(("index", "logits")):
            targets, mask, positive, p = entries(chunk["logits"], config)
            _add_candidates(shown, p, positive, chunk["index"])
            keep = mask.any(axis=1)
            images_read += len(keep)
            hard = positive.astype(np.float32)
            if truth is not None:
                counts.add_all(truth[chunk["index"]])
            counts.add(hard[keep], mask[keep],
                       None if truth is None else truth[chunk["index"][keep]])
            for key, value in (("index", chunk["index"][keep]), ("targets", targets[keep]),
                               ("mask", mask[keep]),
                               # how much of the image is confident: its share of entries
                               ("confidence", mask[keep].mean(axis=1)),
                               ("class", chunk["logits"][keep].argmax(axis=1))):
                kept[key].append(value)
        rows = {k: np.concatenate(v) for k, v in kept.items()}
        position = {int(i): k for k, i in enumerate(rows["index"])}

        def record_of(image, i, rows=rows, position=position):
            k = position[i]
            return example(image, rows["targets"][k].tolist(), float(rows["confidence"][k]),
                           int(rows["class"][k]), i, 1, mask=rows["mask"][k].tolist())

        write_shuffled(split, shard, rows["index"], record_of, out_dir, settings)
        write_shard_stats(out_dir, shard, settings, len(rows["index"]), len(rows["index"]))
    shard_stats = [s.stats() for s in shards]
    stats = {
        "task": "multilabel", "schema": 2, "settings": settings,
        "num_classes": info.num_classes, "channels": info.channels, "class_names": names,
        "positive_threshold": config.positive_threshold,
        "negative_threshold": config.negative_threshold,
        "entries": config.multilabel_entries,
        "hard": config.hard or config.multilabel_entries != "confident",
        "temperature": config.temperature,
        "images_in": sum(s["images_in"] for s in shard_stats),
        "images_read": images_read,
        "unreadable_skipped": sum(s["unreadable_skipped"] for s in shard_stats),
        "unreadable_first": [p for s in shard_stats for p in s["unreadable_first"]][:10],
        "distinct_images": counts.images, "records_written": counts.images,
        "examples_with_copies": counts.images, "records": counts.images,
        "class_weights": class_weights(counts.positives).tolist(),
        "classes": counts.rows(names), "seconds_selecting": time.time() - start}
    rule = {"confident": f"positive at p >= {config.positive_threshold:g}, negative at "
                         f"p <= {config.negative_threshold:g}",
            "all": "baseline: every entry, positive at p >= 0.5",
            "top_class": "baseline: the top class positive, the others negative"}
    shown = {k: np.concatenate(v) for k, v in shown.items()}
    sheets.write_sheets(split, sheets.choose_multilabel(**shown), names, out_dir,
                        [f"{n}: {rule[config.multilabel_entries]}" for n in names],
                        sheets.MULTILABEL_TITLES)
    stats["pictures"] = f"{out_dir}/{sheets.SHEETS}"
    write_json(f"{out_dir}/{STATS}", stats)
    logging.info("Multi-label pseudo-labels: %d of %d images have a confident entry "
                 "(%s).\n%s", counts.images, images_read,
                 rule[config.multilabel_entries], entry_table(stats))
    return stats


def _add_candidates(shown, probabilities, positive, index):
    """Keeps of a chunk the rows its own sheets would show: the final choice over all
    chunks is among them."""
    keep = np.isin(index, sheets.candidates(
        sheets.choose_multilabel(probabilities, positive, index)))
    for key, value in (("probabilities", probabilities), ("positive", positive),
                       ("index", index)):
        shown[key].append(value[keep])


def entry_table(stats):
    """A short per-class table of a multi-label selection's stats.json."""
    truth = any("positive_precision" in r for r in stats["classes"])
    head = "| class | positives | negatives | masked |" + (
        " positive precision | positive recall | negative precision |" if truth else "")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]

    def f(v):
        return "-" if v is None else f"{v:.3f}"

    for r in stats["classes"]:
        line = f"| {r['class']} | {r['positives']} | {r['negatives']} | {r['masked']} |"
        if truth:
            line += (f" {f(r['positive_precision'])} | {f(r['positive_recall'])} | "
                     f"{f(r['negative_precision'])} |")
        lines.append(line)
    return "\n".join(lines)
