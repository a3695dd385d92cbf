"""Pseudo-labels: a clean teacher labels shards (labeler), one global balance selects
(selection, writer), and the set is written as shuffled TFRecord shards (shards);
stage.py runs the whole stage."""

from nstudent import lazy

_HOMES = {
    "LabelConfig": "labeler", "label_shard": "labeler", "label_shards": "labeler",
    "teacher_settings": "labeler", "pseudo_label": "stage",
    "Selection": "selection", "balance": "selection", "filter_and_balance": "selection",
    "soften": "selection", "precision_cutoffs": "cutoffs", "ClassCutoff": "cutoffs",
    "PseudoLabels": "shards", "load_pseudo_labels": "shards", "read_records": "shards",
    "ShardError": "store", "LabelShard": "store",
    "select": "writer", "missing_shards": "writer", "class_table": "writer",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy.exports(__name__, _HOMES)
