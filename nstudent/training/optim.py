"""Optimizer and learning-rate schedule from a few flags."""

import keras

OPTIMIZERS = ("adamw", "sgd", "rmsprop")


def learning_rate_schedule(peak, total_steps, warmup_steps):
    """Linear warm-up to `peak`, then cosine decay to zero."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps)


def make_optimizer(name, learning_rate, weight_decay, total_steps, warmup_steps):
    lr = learning_rate_schedule(learning_rate, total_steps, warmup_steps)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True,
                                    weight_decay=weight_decay or None)
    if name == "rmsprop":  # the paper's optimizer
        return keras.optimizers.RMSprop(lr, rho=0.9, momentum=0.9, epsilon=1e-3,
                                        weight_decay=weight_decay or None)
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")
