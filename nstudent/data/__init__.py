"""Datasets (sources), labeled/unlabeled subsets and tf.data input pipelines."""

from nstudent import lazy

_HOMES = {
    "InputConfig": "config",
    "eval_dataset": "pipeline", "resize": "pipeline", "train_dataset": "pipeline",
    "DataError": "sources", "DatasetInfo": "sources", "Split": "sources", "load": "sources",
    "split_labeled": "subsets",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy.exports(__name__, _HOMES)
