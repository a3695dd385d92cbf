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


def balanced_bce(terms, global_weights=None, replicas=1, class_weights=None):
    """The loss from `masked_bce_terms`. On several replicas pass the weights (rows 1
    and 3 of the terms) summed over them (`global_weights` [2, classes], e.g. an
    all-reduce) and their number: the result is this replica's share times
    `replicas`, so the mean over replicas (what a step that divides each replica's
    loss by their count and sums the gradients optimises) is the global batch's loss.
    `class_weights` [classes]: each class's two averages weigh this much in the mean
    (rare classes' confident positives counted up instead of their images copied)."""
    if global_weights is None:
        global_weights = ops.stack([terms[1], terms[3]])
    sums = ops.stack([terms[0], terms[2]])
    present = ops.cast(global_weights > EPSILON, "float32")
    if class_weights is not None:
        present = present * ops.cast(ops.reshape(class_weights, (1, -1)), "float32")
    means = sums / ops.maximum(global_weights, EPSILON) * present
    return float(replicas) * ops.sum(means) / ops.maximum(ops.sum(present), EPSILON)


def global_balanced_bce(targets, mask, logits, class_weights=None):
    """`balanced_bce` of this replica's batch, normalised by the global batch's
    weights (an all-reduce on several TensorFlow replicas; a JAX step holds the global
    batch already)."""
    from nstudent.training.distribute import cross_replica_sum

    terms = masked_bce_terms(targets, mask, logits)
    weights, replicas = cross_replica_sum(
        ops.stop_gradient(ops.stack([terms[1], terms[3]])))
    return balanced_bce(terms, weights, replicas, class_weights)
