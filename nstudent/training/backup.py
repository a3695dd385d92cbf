"""Resuming a training stage killed mid-way: in place of Keras' BackupAndRestore.

Keras' callback saves the model with its optimizer state every epoch or every
N steps, but restores to the start of the saved epoch: a mid-epoch backup would
then train that epoch's first steps twice, and a kill while saving leaves a
broken file. This callback
- writes each backup beside the last and commits it by renaming one small
  `backup.json` (a kill at any moment leaves the previous backup whole);
- records the epoch, the step inside it and the optimizer's iteration count, and
  `fit` in supervised.py resumes at that very step;
- stores the stage's settings and refuses a backup made with other ones, naming
  the folder to remove;
- is removed by the stage once its exports are complete (not when fit returns:
  a kill while exporting resumes after the last epoch, not from zero).

In a multi-worker run the chief backs up into `<out>/backup/`, every other worker
into `<out>/backup/worker-<i>/` (each restores its own; all hold the same state).
"""

import json
import os
import shutil

import keras
import numpy as np
from absl import logging

from nstudent.errors import InputError
from nstudent.export.atomic import write_json

BACKUP_DIR = "backup"
STATE = "backup.json"


def backup_dir(out_dir, placement):
    root = os.path.join(out_dir, BACKUP_DIR)
    return root if placement.is_chief else os.path.join(root, f"worker-{placement.worker_index}")


class StageBackup(keras.callbacks.Callback):
    """`settings`: a JSON-able dict of what makes the training state (model, data,
    optimizer, schedule); `every_steps`: also back up every that many steps (0: each
    epoch only)."""

    def __init__(self, directory, settings, every_steps=0, steps_per_epoch=1):
        super().__init__()
        self.backup_dir = directory
        self.settings = json.loads(json.dumps(settings))
        self.every_steps = int(every_steps)
        self.steps_per_epoch = steps_per_epoch
        self.epoch, self.step = 0, 0  # position of the next step to train
        self.resumed_from = None

    # -- restore ------------------------------------------------------------------
    def state(self):
        path = os.path.join(self.backup_dir, STATE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def check(self, state):
        if state["settings"] != self.settings:
            changed = _differences(state["settings"], self.settings)
            raise InputError(
                f"The backup in {self.backup_dir} was made with other settings "
                f"(different: {', '.join(changed)}). Re-run with the settings it was "
                f"made with, or remove {self.backup_dir} to train this stage from the "
                "start.")

    def restore(self, model):
        """Loads the last backup into `model` (weights and optimizer state); returns
        (epoch, step) to resume at, (0, 0) when there is none."""
        state = self.state()
        if state is None:
            return 0, 0
        self.check(state)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        if state.get("seeds"):
            _restore_seeds(model, os.path.join(self.backup_dir, state["seeds"]))
        self.epoch, self.step = state["epoch"], state["step"]
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        self.resumed_from = {"epoch": self.epoch, "step": self.step}
        logging.info("Resuming from the backup in %s: %d epoch(s) and %d step(s) done, "
                     "optimizer at iteration %d.", self.backup_dir, self.epoch, self.step,
                     state["iterations"])
        return self.epoch, self.step

    # -- save ---------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:  # a fresh epoch (not the resumed remainder of one)
            self.epoch, self.step = epoch, 0
        self._since = 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self._since += 1
        if self.every_steps and self._since >= self.every_steps:
            self._since = 0
            self._save(self.epoch, self.step)

    def on_epoch_end(self, epoch, logs=None):
        self._save(epoch + 1, 0)
        self.epoch, self.step = epoch + 1, 0

    def _save(self, epoch, step):
        if hasattr(self.model, "jax_state_sync"):  # JAX keeps state outside mid-epoch
            self.model.jax_state_sync()
        os.makedirs(self.backup_dir, exist_ok=True)
        previous = self.state()
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        name = f"state-{iterations:09d}.weights.h5"
        seeds = f"seeds-{iterations:09d}.npy"
        self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
        _save_seeds(self.model, os.path.join(self.backup_dir, seeds))
        write_json(os.path.join(self.backup_dir, STATE), {
            "epoch": epoch, "step": step, "iterations": iterations, "weights": name,
            "seeds": seeds, "settings": self.settings})
        if previous and previous["weights"] != name:
            _remove(os.path.join(self.backup_dir, previous["weights"]))
            if previous.get("seeds"):
                _remove(os.path.join(self.backup_dir, previous["seeds"]))

    def remove(self):
        shutil.rmtree(self.backup_dir, ignore_errors=True)
        parent = os.path.dirname(self.backup_dir)
        if os.path.basename(parent) == BACKUP_DIR:  # a worker's: drop an empty parent
            try:
                os.rmdir(parent)
            except OSError:
                pass


def _seed_states(model):
    """The states of the model's random generators (device noise, dropout, stochastic
    depth), in a fixed order. Keras' weight files leave them out, so a resumed stage
    would draw its first noise again."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def _save_seeds(model, path):
    states = [keras.ops.convert_to_numpy(v) for v in _seed_states(model)]
    with open(path, "wb") as f:  # backup.json, written next, commits it
        np.save(f, np.stack(states) if states else np.zeros((0, 2), np.int64))


def _restore_seeds(model, path):
    states, saved = _seed_states(model), np.load(path)
    if len(saved) != len(states):
        raise RuntimeError(f"{path} holds {len(saved)} generator states; the model has "
                           f"{len(states)}.")
    for variable, value in zip(states, saved):
        variable.assign(value)


def _differences(old, new, prefix=""):
    """Dotted names of the leaves that differ between two nested dicts."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key} {a!r} -> {b!r}")
    return names


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
