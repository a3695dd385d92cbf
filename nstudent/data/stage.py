"""The data one stage works on, as one object: the labeled dataset's splits, the
labeled subset, and the unlabeled images (the rest of the train split, or a
separate collection given by --unlabeled_dataset)."""

import dataclasses
import functools
from typing import Optional

import numpy as np

from nstudent.data.sources import DataError, DatasetInfo, Split
from nstudent.data.subsets import carve_validation, split_labeled

MAX_NAMED_SKIPS = 10


@dataclasses.dataclass
class StageData:
    info: DatasetInfo
    train: Split
    test: Optional[Split] = None
    labels_per_class: int = 0  # 0: every train image is labeled
    seed: int = 0
    dataset: str = ""  # the --dataset spec
    unlabeled_source: Optional[Split] = None  # --unlabeled_dataset, when given
    unlabeled_spec: str = ""
    validation_fraction: float = 0.0  # of the labeled subset, held out to validate on

    @functools.cached_property
    def _subset(self):
        """(labeled for training, unlabeled, held-out labeled for validation)."""
        labeled, unlabeled = split_labeled(self.train.labels, self.info.num_classes,
                                           self.labels_per_class, self.seed)
        train, validation = carve_validation(labeled, self.train.labels,
                                             self.validation_fraction, self.seed)
        return train, unlabeled, validation

    @property
    def labeled_indices(self):
        return self._subset[0]

    @property
    def validation_indices(self):
        return self._subset[2]

    def identity(self):
        """What a training state depends on in the data (a backup's check)."""
        return {"dataset": self.dataset, "labels_per_class": self.labels_per_class,
                "seed": self.seed, "validation_fraction": self.validation_fraction,
                "labeled": len(self.labeled_indices), "num_classes": self.info.num_classes}

    def held_out(self):
        """Which labeled images were held out from training (model_info.json): the
        same dataset, labels per class, seed and fraction pick the same ones."""
        held = {"dataset": self.dataset, "labels_per_class": self.labels_per_class,
                "seed": self.seed, "validation_fraction": self.validation_fraction,
                "examples": int(len(self.validation_indices))}
        if self.info.dropped_classes:  # recorded only when set: older runs compare equal
            held["drop_empty_classes"] = True
        return held

    def labeled(self, batch_size=None, shuffle=False):
        """(uint8 image, label) of the labeled subset, shuffled before decoding every pass
        with `shuffle`; it must fill one batch."""
        n = len(self.labeled_indices)
        if batch_size and n < batch_size:
            raise DataError(f"Only {n} labeled examples for batch size {batch_size}; "
                            "lower --batch_size.")
        return self.train.dataset(self.labeled_indices,
                                  shuffle_seed=self.seed if shuffle else None)

    @property
    def unlabeled(self):
        """(split, indices) of the images to pseudo-label."""
        if self.unlabeled_source is not None:
            return self.unlabeled_source, np.arange(len(self.unlabeled_source))
        return self.train, self._subset[1]

    @property
    def unlabeled_count(self):
        return len(self.unlabeled[1])

    def skipped_files(self, unlabeled=True):
        """Unreadable files skipped so far, in order met: by the labeled splits and (with
        `unlabeled`) the separate unlabeled source."""
        seen = []
        for split in (self.train, self.test, self.unlabeled_source if unlabeled else None):
            for path in (split.skipped_files() if split is not None else []):
                if path not in seen:
                    seen.append(path)
        return seen

    def report(self):
        """What a training run's metrics.json records about its data: the labeled splits
        it read, their skipped files included (pseudo-label stats record the rest)."""
        skipped = self.skipped_files(unlabeled=False)
        return {"dataset": self.dataset, "unlabeled_dataset": self.unlabeled_spec or None,
                "labels_per_class": self.labels_per_class,
                "validation_fraction": self.validation_fraction,
                "validation_examples": len(self.validation_indices),
                "dropped_empty_classes": list(self.info.dropped_classes),
                "skipped_unreadable_images": len(skipped),
                "skipped_unreadable_first": skipped[:MAX_NAMED_SKIPS]}
