"""Datasets (sources), labeled/unlabeled subsets and tf.data input pipelines."""

from nstudent.data.pipeline import InputConfig, eval_dataset, resize, train_dataset  # noqa: F401
from nstudent.data.sources import DataError, DatasetInfo, Split, load  # noqa: F401
from nstudent.data.subsets import split_labeled  # noqa: F401
