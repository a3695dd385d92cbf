"""Optimizer and learning-rate schedule from a few flags.

Everything here but LARS (lars.py) is Keras' own: decoupled weight decay (kept
off batch-norm parameters and biases, as timm and the reference do), the
exponential moving average of the weights (`use_ema`) and gradient accumulation
(`gradient_accumulation_steps`). The schedule counts micro-steps, as Keras'
optimizer evaluates it; with accumulation the moving average is also updated
every micro-step (a decay d per micro-step is d**k per update).
"""

import keras
from absl import logging

from nstudent.errors import InputError

OPTIMIZERS = ("adamw", "sgd", "rmsprop", "lars")


def learning_rate_schedule(peak, total_steps, warmup_steps):
    """Linear warm-up to `peak`, then cosine decay to zero."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps)


def make_optimizer(name, learning_rate, weight_decay, total_steps, warmup_steps,
                   ema_decay=0.0, grad_accum_steps=1):
    lr = learning_rate_schedule(learning_rate, total_steps, warmup_steps)
    shared = dict(use_ema=ema_decay > 0, ema_momentum=ema_decay or 0.99,
                  gradient_accumulation_steps=grad_accum_steps if grad_accum_steps > 1
                  else None)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay, **shared)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True,
                                    weight_decay=weight_decay or None, **shared)
    if name == "rmsprop":  # the paper's optimizer
        return keras.optimizers.RMSprop(lr, rho=0.9, momentum=0.9, epsilon=1e-3,
                                        weight_decay=weight_decay or None, **shared)
    if name == "lars":  # SimCLR's pretraining optimizer
        from nstudent.training.lars import LARS

        return LARS(lr, momentum=0.9, weight_decay=weight_decay, **shared)
    raise InputError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")


def optimizer_for(config, steps_per_epoch, variables):
    """The optimizer a TrainConfig asks for, over `steps_per_epoch` x epochs steps;
    weight decay leaves `variables` of rank < 2 alone."""
    total = steps_per_epoch * config.epochs
    if config.ema_decay and config.ema_decay ** total > 0.1:
        logging.warning(
            "--ema_decay=%g over %d steps: the average still holds %.0f%% of the first "
            "step's weights; a decay near 1 - 10/steps (%.4f) suits this run.",
            config.ema_decay, total, 100 * config.ema_decay ** total,
            max(0.0, 1 - 10 / max(total, 1)))
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.weight_decay,
                               total, int(config.warmup_epochs * steps_per_epoch),
                               config.ema_decay, config.grad_accum_steps)
    kept = [v for v in variables if len(v.shape) < 2]
    if (config.weight_decay or config.optimizer == "lars") and kept:  # LARS: no ratio
        optimizer.exclude_from_weight_decay(var_list=kept)
    return optimizer
