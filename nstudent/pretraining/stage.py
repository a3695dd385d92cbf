"""The contrastive pretraining stage: labeled and unlabeled images -> an exported
encoder with its projection head, scored by kNN and a linear probe."""

import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from nstudent import data, export, ranges
from nstudent.augment.contrastive import ContrastiveViews
from nstudent.errors import InputError
from nstudent.pretraining.knn import knn_accuracy
from nstudent.pretraining.learner import ContrastiveLearner
from nstudent.models.projection_head import HeadConfig, build_pretrain_network
from nstudent.training.distribute import current
from nstudent.training.optim import optimizer_for
from nstudent.training.runs import StageRun
from nstudent.training.supervised import parse_jit

UNLABELED = -1  # the label of an unlabeled image in a pretraining batch


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    head: HeadConfig = HeadConfig()
    temperature: float = 0.1  # NT-Xent; SimCLR's CIFAR recipe uses 0.5
    jitter_strength: float = 1.0  # colour jitter strength s (CIFAR: 0.5)
    blur: bool = False  # Gaussian blur, for images of ~100 px and more
    knn_k: int = 20  # neighbours of the kNN evaluation

    def __post_init__(self):
        ranges.check_fields(self, "knn_k", contrastive_temperature="temperature",
                            color_jitter_strength="jitter_strength")

    def to_dict(self):
        return dataclasses.asdict(self)


def check_batch(batch_size, replicas):
    """Every replica needs two images at least (one positive, one negative pair)."""
    if batch_size // max(replicas, 1) < 2 or batch_size % max(replicas, 1):
        raise InputError(
            f"--batch_size={batch_size} on {replicas} replica(s): contrastive learning "
            "needs at least 2 images per replica (an image's negatives are the others) "
            "and a batch that divides evenly among the replicas.")


def contrastive_dataset(stage_data, input_config, seed, start=0):
    """(uint8 batches at the resolution, int labels with -1 for unlabeled images),
    repeated; labeled and unlabeled images mixed in proportion, from batch `start` of
    the seeded stream on (a resumed stage). Returns (dataset, images per epoch)."""
    size, fraction = input_config.image_size, input_config.eval_crop_fraction
    labeled = stage_data.train.dataset(stage_data.labeled_indices, shuffle_seed=seed)
    split, indices = stage_data.unlabeled
    sources = [labeled]
    counts = [len(stage_data.labeled_indices)]
    if len(indices):
        sources.append(split.dataset(indices, shuffle_seed=seed + 1).map(
            lambda x, y: (x, tf.constant(UNLABELED, tf.int64))))
        counts.append(len(indices))
    weights = [c / sum(counts) for c in counts]
    mixed = tf.data.Dataset.sample_from_datasets([s.repeat() for s in sources], weights,
                                                 seed=seed)
    if start:
        mixed = mixed.skip(int(start) * input_config.batch_size)
    ds = mixed.map(lambda x, y: (data.preprocess_eval(x, size, fraction), y),
                   num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(input_config.batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE), sum(counts)


def embed(network, examples, input_config):
    """(embeddings, labels) of the clean images of (image, label) `examples`, in order."""
    size, fraction = input_config.image_size, input_config.eval_crop_fraction
    ds = examples.map(lambda x, y: (tf.cast(data.preprocess_eval(x, size, fraction),
                                            tf.float32), y),
                      num_parallel_calls=tf.data.AUTOTUNE).batch(input_config.batch_size)
    embeddings, labels = [], []
    for images, y in ds:
        embeddings.append(np.asarray(network.predict_on_batch(images.numpy())["embeddings"],
                                     np.float32))
        labels.append(y.numpy())
    return np.concatenate(embeddings), np.concatenate(labels)


def evaluate_representation(network, probe, stage_data, input_config, k):
    """kNN accuracy on the test split (bank: the labeled images) and the online
    linear probe's top-1 on the clean test images."""
    bank, bank_labels = embed(network, stage_data.labeled(), input_config)
    test, test_labels = embed(network, stage_data.test.dataset(), input_config)
    probe_logits = np.asarray(probe(test))
    return {"knn_top1": knn_accuracy(bank, bank_labels, test, test_labels,
                                     stage_data.info.num_classes, k),
            "knn_k": k, "knn_bank": len(bank),
            "linear_eval_top1": float(np.mean(np.argmax(probe_logits, -1) == test_labels)),
            "test_examples": len(test)}


def pretraining_placement(placement):
    """SimCLR normalises over the global batch: on several TensorFlow replicas batch
    norm is synchronised whether or not --sync_batchnorm is set (per replica, a
    replica's statistics would tell its own images apart, a shortcut the contrastive
    loss can exploit). JAX always normalises over the global batch."""
    if placement.strategy is None or placement.replicas < 2 or placement.sync_batchnorm:
        return placement
    logging.info("Pretraining on %d replicas: batch-norm statistics are synchronised "
                 "over the global batch (SimCLR's global BN).", placement.replicas)
    return dataclasses.replace(placement, sync_batchnorm=True)


def pretrain(out_dir, stage_data, model_config, input_config, train_config, config):
    """SimCLR pretraining of `model_config`'s encoder on every labeled and unlabeled
    image; an epoch is one pass over them. Returns the metrics of metrics.json."""
    placement = pretraining_placement(current())
    check_batch(input_config.batch_size, placement.replicas)
    info, seed, batch = stage_data.info, stage_data.seed, input_config.batch_size
    _, count = contrastive_dataset(stage_data, input_config, seed)
    if count < batch:
        raise data.DataError(f"Only {count} images for a batch of {batch}; lower "
                             "--pretrain_batch_size.")
    steps = train_config.steps_per_epoch or count // batch
    logging.info("Contrastive pretraining: %d labeled + %d unlabeled images, batch %d "
                 "(x2 views), %d steps per epoch.", len(stage_data.labeled_indices),
                 stage_data.unlabeled_count, batch, steps)
    run = StageRun("pretrain", out_dir, stage_data, model_config, input_config, train_config,
                   placement)
    with run.scope():
        network = build_pretrain_network(model_config, config.head)
        views = ContrastiveViews(input_config.crop_scale, input_config.crop_ratio,
                                 input_config.random_flip, config.jitter_strength,
                                 config.blur, seed=seed, name="views")
        learner = ContrastiveLearner(network, views, info.num_classes, config.temperature)
        learner.compile(optimizer=optimizer_for(train_config, steps,
                                                learner.trainable_variables),
                        jit_compile=parse_jit(train_config.jit_compile))

    def train_ds(start):
        return contrastive_dataset(stage_data, input_config, seed, start)[0]

    history, epoch_seconds = run.fit(learner, network, train_ds, steps,
                                     {"contrastive": config.to_dict()}, validate=False)
    split, indices = stage_data.unlabeled
    clean = stage_data.labeled().map(lambda x, y: x).concatenate(
        split.dataset(indices).map(lambda x, y: x))
    bn_batches = run.recalibrate(network, clean)
    scores = evaluate_representation(network, learner.probe, stage_data, input_config,
                                     config.knn_k)
    logging.info("Pretrained encoder: kNN top-1 %.4f (k=%d), linear probe top-1 %.4f.",
                 scores["knn_top1"], config.knn_k, scores["linear_eval_top1"])
    metrics = run.report(network, history, epoch_seconds, 2 * batch, steps, dict(
        scores, contrastive=config.to_dict(), labeled_examples=len(stage_data.labeled_indices),
        unlabeled_examples=int(stage_data.unlabeled_count), bn_recalibration_batches=bn_batches,
        jit_compile=bool(learner.jit_compile), views_per_image=2))
    head = dataclasses.asdict(config.head)
    return run.publish(metrics, lambda: export.write_run(
        out_dir, network, model_config, info, metrics, input_config.eval_crop_fraction,
        kind=export.PRETRAIN, head=head), "kNN top-1 %.4f, linear probe top-1 %.4f" % (
            scores["knn_top1"], scores["linear_eval_top1"]))
