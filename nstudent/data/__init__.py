"""Datasets (sources), labeled/unlabeled subsets and tf.data input pipelines."""

from nstudent import lazy

_HOMES = {
    "CACHES": "config", "CROPS": "config", "InputConfig": "config", "TASKS": "config",
    "clean_batches": "pipeline", "eval_dataset": "pipeline", "preprocess_eval": "pipeline", "resize": "pipeline",
    "train_dataset": "pipeline",
    "DataError": "sources", "DatasetInfo": "sources", "Split": "sources", "load": "sources",
    "load_unlabeled": "sources", "UNLABELED": "sources",
    "StageData": "stage",
    "split_labeled": "subsets",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy.exports(__name__, _HOMES)
