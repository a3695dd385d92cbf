"""Run by test_simclr.py in a fresh process (devices are fixed at start-up): NT-Xent
and its gradient on 2 logical CPUs (MirroredStrategy) against one device holding the
global batch; prints the figures as JSON.

  python tests/contrastive_replica_check.py
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from nstudent.pretraining.losses import nt_xent  # noqa: E402

TEMPERATURE = 0.5
rng = np.random.default_rng(0)
W = rng.normal(size=(5, 4)).astype("float32")
XA = rng.normal(size=(8, 5)).astype("float32")
XB = rng.normal(size=(8, 5)).astype("float32")


def loss_and_gradient(w, xa, xb, gather, replicas=1):
    with tf.GradientTape() as tape:
        loss, accuracy = nt_xent(tf.matmul(xa, w), tf.matmul(xb, w), TEMPERATURE, gather)
        scaled = loss / replicas  # what the training step does on several replicas
    return loss, tape.gradient(scaled, w)


def main():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        w = tf.Variable(W)

    def halves(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[4 * ctx.replica_id_in_sync_group:][:4]))

    results = {"replicas": strategy.num_replicas_in_sync, "x": [XA.tolist(), XB.tolist()],
               "w": W.tolist(), "temperature": TEMPERATURE}
    single_w = tf.Variable(W)
    loss, grad = loss_and_gradient(single_w, XA, XB, True)
    results["single_loss"], results["single_grad"] = float(loss), grad.numpy().tolist()
    for gather in (True, False):
        losses, grads = strategy.run(
            tf.function(lambda a, b: loss_and_gradient(w, a, b, gather, 2)),
            args=(halves(XA), halves(XB)))
        name = "gathered" if gather else "local"
        results[name + "_losses"] = [float(v) for v in strategy.experimental_local_results(
            losses)]
        results[name + "_grad"] = strategy.reduce(
            tf.distribute.ReduceOp.SUM, grads, axis=None).numpy().tolist()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
