"""Where a stage runs: one device, every local device, or several machines.

The engines are the frameworks' own: `tf.distribute` (MirroredStrategy,
MultiWorkerMirroredStrategy from TF_CONFIG) on TensorFlow and
`keras.distribution` (DataParallel, `initialize` for several processes) on JAX.
This module only picks one from the flags and the environment, checks TF_CONFIG,
and answers the questions the stages ask: how many replicas, am I the chief,
which scope to build the model in.

Set once per process (`configure_distribution`), before TensorFlow runs any op: a
MultiWorkerMirroredStrategy must be the first thing it creates.
"""

import contextlib
import dataclasses
import json
import os

import keras
from absl import logging

from nstudent.errors import InputError
from nstudent.keras_private import build_once_from

DISTRIBUTIONS = ("auto", "none", "data_parallel")
JAX_PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"


@dataclasses.dataclass(frozen=True)
class Placement:
    """What `configure_distribution` chose. `strategy`: the tf.distribute strategy
    (TensorFlow); None for the default one and on JAX (there the global distribution
    is set)."""
    mode: str = "none"  # none | data_parallel | multi_worker
    replicas: int = 1
    workers: int = 1
    worker_index: int = 0
    is_chief: bool = True
    sync_batchnorm: bool = False
    strategy: object = None

    def scope(self):
        """Build and compile models inside this (variables are mirrored under it)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def report(self):
        return {"distribution": self.mode, "replicas": self.replicas,
                "workers": self.workers, "sync_batchnorm": self.sync_batchnorm}


_current = Placement()


def current():
    return _current


def set_current(placement):
    """For tests and tools that build a Placement themselves."""
    global _current
    _current = placement
    return placement


def check_distribution(mode):
    if mode not in DISTRIBUTIONS:
        raise InputError(f"--distribution={mode!r}; choose one of {', '.join(DISTRIBUTIONS)}.")


def parse_tf_config(text):
    """TF_CONFIG -> (number of workers, this task's index among them, is chief), or
    None when it names one task only. A malformed value raises ValueError naming the
    field, before TensorFlow reads it and fails somewhere less clear."""
    if not text or not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}).")
    if not isinstance(config, dict):
        raise InputError("TF_CONFIG must be a JSON object with 'cluster' and 'task'.")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise InputError("TF_CONFIG['cluster'] is missing or empty: it maps 'worker' "
                         "(and optionally 'chief') to lists of host:port.")
    for role, hosts in cluster.items():
        if role not in ("chief", "worker"):
            raise InputError(f"TF_CONFIG['cluster'] has role {role!r}; only 'chief' and "
                             "'worker' are used (no parameter servers).")
        if (not isinstance(hosts, list) or not hosts or not all(
                isinstance(h, str) and h.rpartition(":")[2].isdigit() for h in hosts)):
            raise InputError(f"TF_CONFIG['cluster'][{role!r}] must be a non-empty list of "
                             f"'host:port' strings, got {hosts!r}.")
    if len(cluster.get("chief", [])) > 1:
        raise InputError("TF_CONFIG['cluster']['chief'] lists more than one host.")
    if not isinstance(task, dict):
        raise InputError("TF_CONFIG['task'] is missing: it names this process, e.g. "
                         "{'type': 'worker', 'index': 0}.")
    role, index = task.get("type"), task.get("index")
    if role not in cluster:
        raise InputError(f"TF_CONFIG['task']['type'] is {role!r}, not a role of the "
                         f"cluster ({', '.join(sorted(cluster))}).")
    if not isinstance(index, int) or isinstance(index, bool) or not (
            0 <= index < len(cluster[role])):
        raise InputError(f"TF_CONFIG['task']['index'] is {index!r}; the cluster has "
                         f"{len(cluster[role])} {role!r} entries (index 0-"
                         f"{len(cluster[role]) - 1}).")
    chiefs = cluster.get("chief", [])
    workers = len(chiefs) + len(cluster.get("worker", []))
    if workers == 1:
        return None
    position = index if role == "chief" else len(chiefs) + index
    # without a 'chief' role, worker 0 is the chief (TensorFlow's own rule)
    return workers, position, position == 0


def _tf_devices():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]


def _tf_placement(mode, sync_batchnorm):
    import tensorflow as tf

    cluster = parse_tf_config(os.environ.get("TF_CONFIG", ""))
    if cluster:
        if mode == "none":
            raise InputError("TF_CONFIG names several workers but --distribution=none; "
                             "unset TF_CONFIG to train on this machine alone.")
        workers, index, chief = cluster
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return Placement("multi_worker", strategy.num_replicas_in_sync, workers, index,
                         chief, sync_batchnorm, strategy)
    devices = _tf_devices()
    accelerators = tf.config.list_logical_devices("GPU")
    if mode == "none" or (mode == "auto" and len(accelerators) < 2):
        return Placement()
    if len(devices) < 2:
        logging.warning("--distribution=data_parallel but only one device (%s): running "
                        "on one.", devices[0] if devices else "none")
        return Placement()
    strategy = tf.distribute.MirroredStrategy(devices)
    return Placement("data_parallel", strategy.num_replicas_in_sync, 1, 0, True,
                     sync_batchnorm, strategy)


def _jax_placement(mode, sync_batchnorm):
    import jax

    processes = int(os.environ.get(JAX_PROCESSES_ENV, "1") or 1)
    if processes > 1:
        if mode == "none":
            raise InputError(f"{JAX_PROCESSES_ENV}={processes} but --distribution=none.")
        keras.distribution.initialize()  # the KERAS_DISTRIBUTION_* variables
    accelerators = [d for d in jax.devices() if d.platform != "cpu"]
    devices = jax.devices()
    if mode == "none" or (mode == "auto" and len(accelerators) < 2 and processes == 1):
        return Placement()
    if len(devices) < 2:
        logging.warning("--distribution=data_parallel but only one device (%s): running "
                        "on one.", devices[0])
        return Placement()
    if not sync_batchnorm:
        # one jit-compiled program sees the global batch: its statistics are global
        logging.info("JAX: batch-norm statistics are over the global batch (as with "
                     "--sync_batchnorm); per-replica statistics are TensorFlow only.")
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()))
    return Placement("multi_worker" if processes > 1 else "data_parallel", len(devices),
                     processes, jax.process_index(), jax.process_index() == 0, True)


def configure_distribution(mode="auto", sync_batchnorm=False):
    """Chooses and installs the placement for this process; returns it."""
    check_distribution(mode)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        placement = _tf_placement(mode, sync_batchnorm)
    elif backend == "jax":
        placement = _jax_placement(mode, sync_batchnorm)
    elif mode == "data_parallel":
        raise InputError(f"--distribution=data_parallel is not supported on {backend}.")
    else:
        placement = Placement()
    if placement.replicas > 1:
        logging.info("Distribution %s: %d replicas on %d worker(s); this is worker %d%s.",
                     placement.mode, placement.replicas, placement.workers,
                     placement.worker_index, " (chief)" if placement.is_chief else "")
    return set_current(placement)


@contextlib.contextmanager
def synchronised_batch_norm(network, placement=None):
    """TensorFlow, `--sync_batchnorm`: inside, batch-norm layers all-reduce their batch
    statistics across replicas; after, they are plain again, so exports carry the
    plain layer."""
    placement = placement or current()
    norms = []
    if placement.strategy is not None and placement.sync_batchnorm:
        norms = [l for l in network.layers
                 if isinstance(l, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.synchronized = True
    try:
        yield
    finally:
        for layer in norms:
            layer.synchronized = False


def scale_loss(loss):
    """A custom train step's loss for the optimizer: TensorFlow sums replica
    gradients, so each replica's mean loss is divided by the replica count (what
    Keras' own step does); JAX differentiates the global mean and needs nothing."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


def cross_replica_concat(x):
    """(x of every replica stacked in replica order, where this replica's rows start):
    contrastive negatives from the global batch. TensorFlow gathers inside the
    replica's step (the gradient flows back to each replica's rows); a JAX step
    already holds the global batch, so there x is returned as it is, at 0."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            offset = context.replica_id_in_sync_group * tf.shape(x)[0]
            return context.all_gather(x, axis=0), offset
    return x, 0


def cross_replica_sum(x):
    """(x summed over the replicas, their number): a loss normalised by the global
    batch's counts. TensorFlow all-reduces inside the replica's step; a JAX step
    already holds the global batch, so there x is returned as it is, with 1."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return (context.all_reduce(tf.distribute.ReduceOp.SUM, x),
                    context.num_replicas_in_sync)
    return x, 1


def shard_for_workers(dataset, placement=None):
    """Multi-worker input: every worker reads the source and keeps its share of each
    batch (file-based sharding would fail with fewer files than workers)."""
    placement = placement or current()
    if placement.workers < 2 or placement.strategy is None:
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def prebuild(model, dataset, placement=None):
    """Two Keras 3.15 steps fail under MultiWorkerMirroredStrategy: building a
    model's metrics from a batch it first reduces across workers (a PerReplica it
    cannot convert), and averaging each scalar step log "along axis 0". There the
    model is built from one plain batch, and its steps return their logs as
    1-element vectors, which Keras then averages over the replicas (equal shards:
    the global figure)."""
    placement = placement or current()
    if placement.mode != "multi_worker" or placement.strategy is None:
        return
    if getattr(model, "_nstudent_multi_worker", False):
        return
    batch = next(iter(dataset))
    with placement.scope():
        build_once_from(model, batch)

    def vector_logs(step):
        def run(*args):
            logs = step(*args)
            return {k: keras.ops.reshape(v, (1,)) for k, v in logs.items()}
        return run

    model.train_step = vector_logs(model.train_step)
    model.test_step = vector_logs(model.test_step)
    model._nstudent_multi_worker = True
