"""Pseudo-labels: a clean teacher's predictions, filtered, balanced, written as shards."""

from nstudent.pseudo_labels.labeler import (  # noqa: F401
    LabelConfig, label_shard, label_shards, teacher_settings)
from nstudent.pseudo_labels.selection import (  # noqa: F401
    Selection, filter_and_balance, soften)
from nstudent.pseudo_labels.shards import (  # noqa: F401
    PseudoLabels, ShardError, load_pseudo_labels, shard_is_complete)
