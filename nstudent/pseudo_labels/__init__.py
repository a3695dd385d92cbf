"""Pseudo-labels: a clean teacher's predictions, filtered, balanced, written as shards."""

from nstudent import lazy

_HOMES = {
    "LabelConfig": "labeler", "label_shard": "labeler", "label_shards": "labeler",
    "teacher_settings": "labeler", "pseudo_label": "labeler",
    "Selection": "selection", "filter_and_balance": "selection", "soften": "selection",
    "PseudoLabels": "shards", "ShardError": "shards", "load_pseudo_labels": "shards",
    "shard_is_complete": "shards",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy.exports(__name__, _HOMES)
