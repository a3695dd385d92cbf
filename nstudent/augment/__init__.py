"""Input noise: RandAugment and the geometric train-time preprocessing."""

from nstudent.augment.contrastive import ContrastiveViews  # noqa: F401
from nstudent.augment.device import DeviceNoise, device_noise  # noqa: F401
from nstudent.augment.randaugment import (  # noqa: F401
    IMPLEMENTATIONS, make_cutout, make_randaugment, resolve_impl)
