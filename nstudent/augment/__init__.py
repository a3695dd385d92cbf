"""Input noise: RandAugment and the geometric train-time preprocessing."""

from nstudent.augment.randaugment import IMPLEMENTATIONS, make_randaugment  # noqa: F401
