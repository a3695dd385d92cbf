"""The multi-label loss: binary cross-entropy per class, masked and balanced.

Confident pseudo-labels come as a target and a mask per class (UPS, Rizve et
al. 2021); a masked entry adds nothing. Most entries are easy negatives, so a
plain mean lets them swamp the few positives: each class's positive part
(-t log p) and negative part (-(1 - t) log(1 - p)) are averaged apart, each over
its own weight (mask x t, mask x (1 - t)), and the loss is the mean of those
averages over the (class, part) pairs the batch has. The sums and weights add up
over replicas, so the loss is the same whether one or several replicas see the
global batch (`balanced_bce`'s `global_terms`). Keras ops only (JAX runs it too).
"""

from keras import ops

EPSILON = 1e-12  # a (class, part) with weight below this is absent from the batch


def masked_bce_terms(targets, mask, logits):
    """[4, classes]: per class the positive part's sum and weight, then the negative
    part's sum and weight, over this batch's unmasked entries."""
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "float32")
    mask = ops.cast(mask, "float32")
    positive, negative = mask * targets, mask * (1.0 - targets)
    return ops.stack([
        ops.sum(-ops.log_sigmoid(logits) * positive, axis=0), ops.sum(positive, axis=0),
        ops.sum(-ops.log_sigmoid(-logits) * negative, axis=0), ops.sum(negative, axis=0)])


def balanced_bce(terms, global_terms=None, replicas=1):
    """The loss from `masked_bce_terms`. On several replicas pass the terms summed over
    them (`global_terms`, e.g. an all-reduce) and their number: the result is this
    replica's share times `replicas`, so the mean over replicas (what a step that
    divides each replica's loss by their count and sums the gradients optimises) is
    the global batch's loss."""
    global_terms = terms if global_terms is None else global_terms
    sums = ops.stack([terms[0], terms[2]])
    weights = ops.stack([global_terms[1], global_terms[3]])
    present = ops.cast(weights > EPSILON, "float32")
    means = sums / ops.maximum(weights, EPSILON) * present
    return float(replicas) * ops.sum(means) / ops.maximum(ops.sum(present), 1.0)
