"""The range of every numeric setting, written once: the tools check their flags
against it before any data is read, and the configs check their fields against it
when they are made (from flags or from Python), with one message naming the flag.
"""

from nstudent.errors import InputError

# (flag, lowest, lowest allowed, highest, highest allowed); None: unbounded.
RANGES = (
    ("labels_per_class", 0, True, None, False),  # 0: every label
    ("num_classes", 0, True, None, False),  # 0: from the data
    ("width_scale", 0, False, None, False),
    ("depth_scale", 0, False, None, False),
    ("image_size", 0, True, None, False),  # 0: the variant's resolution
    ("dropout", None, False, 1, False),  # < 0: the variant's rate
    ("stochastic_depth", 0, True, 1, False),
    ("batch_size", 1, True, None, False),
    ("epochs", 0, True, None, False),
    ("steps_per_epoch", 0, True, None, False),  # 0: one pass over the data
    ("train_steps", 0, True, None, False),  # 0: --epochs
    ("student_steps", 0, True, None, False),  # 0: epochs
    ("learning_rate", 0, False, None, False),
    ("weight_decay", 0, True, None, False),
    ("warmup_epochs", 0, True, None, False),
    ("randaugment_layers", 0, True, None, False),  # 0: no RandAugment
    ("randaugment_magnitude", 0, True, 10, True),
    ("crop_padding", 0, True, None, False),
    ("cutout", 0, True, None, False),  # 0: no Cutout
    ("fill_value", 0, True, 255, True),
    ("bn_recalibration_batches", 0, True, None, False),
    ("eval_every_epochs", 0, True, None, False),
    ("backup_every_steps", 0, True, None, False),
    ("grad_accum_steps", 1, True, None, False),
    ("ema_decay", 0, True, 1, False),
    ("label_smoothing", 0, True, 1, False),
    ("validation_fraction", 0, True, 1, False),
    ("temperature", 0, False, None, False),
    ("min_confidence", 0, True, 1, True),
    ("per_class", 0, True, None, False),  # 0: the mean count per class
    ("max_copies", 0, True, None, False),  # 0: no limit
    ("min_precision", 0, True, 1, True),  # 0: off
    ("min_precision_count", 1, True, None, False),
    ("to_label", 0, True, None, False),  # 0: no to_label.csv
    ("label_batch_size", 1, True, None, False),
    ("label_chunk_size", 1, True, None, False),
    ("unlabeled_ratio", 1, True, None, False),
    ("pseudo_loss_weight", 0, True, None, False),
    ("labeled_loss_weight", 0, True, None, False),
    ("distill_temperature", 0, True, None, False),  # 0: no distillation
    ("finetune_resolution", 0, True, None, False),  # 0: no fine-tuning
    ("freeze_blocks", -1, True, None, False),  # -1: all but the last stage's
    ("finetune_epochs", 0, True, None, False),
    ("finetune_learning_rate", 0, False, None, False),
    ("pretrain_epochs", 0, True, None, False),
    ("pretrain_learning_rate", 0, False, None, False),
    ("pretrain_weight_decay", 0, True, None, False),
    ("pretrain_warmup_epochs", 0, True, None, False),
    ("contrastive_temperature", 0, False, None, False),
    ("proj_head_layers", 1, True, None, False),
    ("proj_dim", 1, True, None, False),
    ("color_jitter_strength", 0, True, None, False),
    ("knn_k", 1, True, None, False),
    ("ft_proj_selector", 0, True, None, False),
)

BY_NAME = {name: bounds for name, *bounds in RANGES}


def check_range(name, value, low, low_ok, high, high_ok):
    """InputError naming --`name` when `value` is outside the range."""
    if ((low is None or value > low or (value == low and low_ok))
            and (high is None or value < high or (value == high and high_ok))):
        return
    if high is None:
        rule = ({True: "must not be negative", False: "must be positive"}[low_ok]
                if low == 0 else f"must be at least {low}" if low_ok else
                f"must be greater than {low}")
    elif low is None:
        rule = f"must be at most {high}" if high_ok else f"must be below {high}"
    else:
        rule = (f"must be in {'[' if low_ok else '('}{low}, "
                f"{high}{']' if high_ok else ')'}")
    raise InputError(f"--{name} {rule}, got {value}.")


def check(name, value):
    """`value` against --`name`'s range (None: unset, allowed)."""
    if value is not None:
        check_range(name, value, *BY_NAME[name])


def check_fields(config, *names, **renamed):
    """A config's fields against their flags' ranges: `names` where the field is named
    as its flag, `renamed` as flag=field where it is not."""
    for flag, field in [*zip(names, names), *renamed.items()]:
        check(flag, getattr(config, field))
