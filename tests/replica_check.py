"""Run by test_distribute.py in a fresh process (devices are fixed at start-up):
one supervised and one noisy-student step on 1 and on 2 replicas of the same
global batch, noise off; prints the largest weight differences as JSON.

  python tests/replica_check.py   (KERAS_BACKEND=tensorflow|jax)
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":  # two host devices for JAX
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if BACKEND == "tensorflow":  # two logical CPUs, before TensorFlow runs any op
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
else:
    tf.config.set_visible_devices([], "GPU")

import keras  # noqa: E402

from nstudent.models import ModelConfig, build_efficientnet  # noqa: E402
from nstudent.training import distribute  # noqa: E402
from nstudent.training.steps import MultiLabelStudent, NoisyStudent  # noqa: E402
from nstudent.training.supervised import TrainConfig, compile_for_training  # noqa: E402

CONFIG = ModelConfig(variant="b0", num_classes=4, channels=1, image_size=16,
                     width_scale=0.25, depth_scale=0.25, dropout=0.0, stochastic_depth=0.0)
TRAIN = TrainConfig(epochs=1, optimizer="sgd", learning_rate=0.1, warmup_epochs=0,
                    weight_decay=0.0)
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (8, 16, 16, 1)).astype("float32")
Y = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
XP = rng.integers(0, 256, (8, 16, 16, 1)).astype("float32")
YP = rng.dirichlet(np.ones(4), 8).astype("float32")
# multi-label: multi-hot labels; pseudo targets and a mask side by side, the masked
# entries and the positives unevenly split between the halves (a per-replica
# normalisation would then differ)
YM = (rng.random((8, 4)) < 0.4).astype("float32")
YMP = np.concatenate([rng.random((8, 4)), (rng.random((8, 4)) < 0.6)], 1).astype("float32")


def one_step(placement, student):
    """The network's weights after one step on the global batch; `student`: False
    (supervised), True (noisy student) or "multilabel"."""
    distribute.set_current(placement)
    keras.utils.set_random_seed(1)
    with placement.scope():
        network = build_efficientnet(CONFIG)
        if student == "multilabel":
            model = MultiLabelStudent(network, 4, class_weights=[1.0, 2.0, 0.5, 1.0])
            model.compile(optimizer=keras.optimizers.SGD(0.1))
            ds = tf.data.Dataset.from_tensors(((X, YM), (XP, YMP)))
        elif student:
            model = NoisyStudent(network)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
            ds = tf.data.Dataset.from_tensors(((X, Y), (XP, YP)))
        else:
            model = network
            compile_for_training(model, TRAIN, 1)
            ds = tf.data.Dataset.from_tensors((X, Y))
    with distribute.synchronised_batch_norm(network, placement):
        model.fit(ds, epochs=1, verbose=0)
    weights = network.get_weights()
    if BACKEND == "jax":
        keras.distribution.set_distribution(None)
    return weights


def largest_difference(a, b):
    return float(max(np.abs(p - q).max() for p, q in zip(a, b)))


def main():
    results = {"backend": BACKEND}
    two = distribute.configure_distribution("data_parallel", sync_batchnorm=True)
    results["replicas"] = two.replicas
    for student in (False, True, "multilabel"):
        name = {False: "supervised", True: "student", "multilabel": "multilabel_student"}[
            student]
        single = one_step(distribute.Placement(), student)
        if BACKEND == "jax":  # one_step unset it for the single-device run
            two = distribute.configure_distribution("data_parallel", sync_batchnorm=True)
        results[name] = largest_difference(single, one_step(two, student))
        results[name + "_scale"] = float(max(np.abs(w).max() for w in single))
        if BACKEND == "tensorflow":  # per-replica statistics: a different step
            per_replica = dataclasses.replace(two, sync_batchnorm=False)
            results[name + "_per_replica_bn"] = largest_difference(
                single, one_step(per_replica, student))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
