"""NT-Xent, the contrastive loss of SimCLR (Chen et al., 2020), in keras.ops.

For a batch of N images seen in two views, each of the 2N projections (L2
normalised) must pick out its partner among the other 2N - 1 by cosine
similarity / temperature: a softmax cross-entropy whose negatives are both
views of every other image, its own similarity masked out. On several replicas
the candidates are the global batch's (`cross_replica_concat`), so the loss
does not depend on how the batch was split.

The scale is the reference implementation's (google-research/simclr,
`add_contrastive_loss`): the two directions' cross-entropies summed, averaged over
the N images, which is 2x the mean over 2N anchors that the paper's Algorithm 1
writes. SimCLR's learning rates and weight decay were tuned at that scale, and with
LARS the scale sets the balance of gradient and weight decay.
"""

import keras
from keras import ops

from nstudent.errors import InputError
from nstudent.training.distribute import cross_replica_concat

MASKED = -1e9  # a logit no softmax picks: a projection is not its own negative


def normalise(z):
    return z / ops.maximum(ops.norm(z, axis=-1, keepdims=True), 1e-12)


def nt_xent(z_a, z_b, temperature, gather=True):
    """(loss, accuracy) of this replica's rows: over its n images, the mean of the
    summed cross-entropies of picking the partner view from either view (the
    reference's scale, above), and how often the partner is the arg max.
    `z_a`, `z_b`: [n, d] projections of the two views of the same n images.
    `gather`: candidates from every replica (else this replica's rows only)."""
    if temperature <= 0:
        raise InputError(f"The contrastive temperature must be positive, got {temperature}.")
    z_a, z_b = normalise(ops.cast(z_a, "float32")), normalise(ops.cast(z_b, "float32"))
    all_a, offset = cross_replica_concat(z_a) if gather else (z_a, 0)
    all_b, _ = cross_replica_concat(z_b) if gather else (z_b, 0)
    n, total = ops.shape(z_a)[0], ops.shape(all_a)[0]
    own = ops.one_hot(ops.arange(n) + offset, total)  # each row's partner column
    t = float(temperature)

    def anchor_loss(anchors, partners, same_view):
        same = ops.matmul(anchors, ops.transpose(same_view)) / t
        same = ops.where(own > 0, MASKED, same)
        logits = ops.concatenate([ops.matmul(anchors, ops.transpose(partners)) / t, same], 1)
        target = ops.concatenate([own, ops.zeros_like(own)], 1)
        loss = keras.losses.categorical_crossentropy(target, logits, from_logits=True)
        hit = ops.cast(ops.equal(ops.argmax(logits, -1), ops.argmax(target, -1)), "float32")
        return loss, hit

    loss_a, hit_a = anchor_loss(z_a, all_b, all_a)
    loss_b, hit_b = anchor_loss(z_b, all_a, all_b)
    return ops.mean(loss_a + loss_b), ops.mean(ops.concatenate([hit_a, hit_b], 0))
