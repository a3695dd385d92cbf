"""What fit() trains during contrastive pretraining: two views per image, NT-Xent
on the projections, and an online linear probe on the labeled images."""

import keras
from keras import layers, ops

from nstudent.pretraining.losses import nt_xent
from nstudent.training.steps import LossStep


class ContrastiveLearner(LossStep):
    """Trains `network` (images -> embeddings, projections) on batches of (uint8
    images, labels), a label of -1 marking an unlabeled image.

    Both views go through the network in one forward pass (batch norm sees both).
    The loss is NT-Xent over the global batch plus the cross-entropy of a linear
    classifier on the stop-gradient embeddings of the first view of the labeled
    images: SimCLR's online linear evaluation, which trains the probe without
    touching the encoder. Logs the contrastive loss and accuracy (partner found)
    and the probe's loss and top-1.
    """

    def __init__(self, network, views, num_classes, temperature, **kwargs):
        super().__init__(**kwargs)
        self.network, self.views = network, views
        self.temperature = float(temperature)
        self.probe = layers.Dense(num_classes, dtype="float32", name="linear_probe")
        self.probe.build((None, network.output["embeddings"].shape[-1]))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.contrastive_tracker = keras.metrics.Mean(name="contrastive_loss")
        self.contrastive_top1 = keras.metrics.Mean(name="contrastive_top1")
        self.probe_tracker = keras.metrics.Mean(name="probe_loss")
        self.probe_top1 = keras.metrics.SparseCategoricalAccuracy(name="probe_top1")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.contrastive_tracker, self.contrastive_top1,
                self.probe_tracker, self.probe_top1]

    def call(self, images, training=False):
        n = ops.shape(images)[0]
        views = ops.concatenate([self.views(images, training=training),
                                 self.views(images, training=training)], axis=0)
        outputs = self.network(views, training=training)
        embeddings = ops.stop_gradient(outputs["embeddings"][:n])
        return {"projections": outputs["projections"], "probe": self.probe(embeddings)}

    def step_inputs(self, data):
        images, _ = data
        return images

    def step_losses(self, outputs, data):
        images, labels = data
        n = images.shape[0]
        z = ops.cast(outputs["projections"], "float32")
        contrastive, found = nt_xent(z[:n], z[n:], self.temperature)
        labeled = ops.cast(labels >= 0, "float32")
        known = ops.where(labels >= 0, labels, 0)
        probe = keras.losses.sparse_categorical_crossentropy(known, outputs["probe"],
                                                             from_logits=True)
        probe = ops.sum(probe * labeled) / ops.maximum(ops.sum(labeled), 1.0)
        return contrastive + probe, (contrastive + probe, contrastive, found, probe)

    def update_metrics(self, parts, outputs, data):
        _, labels = data
        for tracker, value in zip(self.metrics[:4], parts):
            tracker.update_state(value)
        self.probe_top1.update_state(ops.where(labels >= 0, labels, 0), outputs["probe"],
                                     sample_weight=ops.cast(labels >= 0, "float32"))
        return {m.name: m.result() for m in self.metrics}
