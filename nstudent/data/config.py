"""How training batches are made: resolution, batch size, crops and the input noise.

Its own module, free of TensorFlow, so device-side training (which needs no
tf.data) can use it on a machine without TensorFlow.
"""

import dataclasses

from nstudent import ranges
from nstudent.errors import InputError

CROPS = ("pad", "random_resized")
CACHES = ("auto", "memory", "disk", "none")
TASKS = ("multiclass", "multilabel")  # one class per image, or any number


@dataclasses.dataclass(frozen=True)
class InputConfig:
    image_size: int
    batch_size: int
    randaugment_layers: int = 2
    randaugment_magnitude: float = 9.0
    randaugment_impl: str = "keras_cv"
    random_flip: bool = True
    crop: str = "pad"  # pad: resize, pad, random crop; random_resized: Inception
    crop_padding: int = 0  # pad: pixels of fill_value padding before a random crop
    crop_scale: tuple = (0.08, 1.0)  # random_resized: area fraction range
    crop_ratio: tuple = (0.75, 4 / 3)  # random_resized: aspect ratio range
    center_crop: float = 0.875  # random_resized: evaluation keeps this central fraction
    fill_value: float = 128.0  # what geometric noise exposes is filled with this grey
    # side in px of the square cut out (filled with fill_value) after RandAugment, as the
    # reference's small-image input (half the side); 0: none
    cutout: int = 0
    # False: RandAugment's colour operations only (multi-label runs: a shear or a shift
    # of up to 0.9 of the side at magnitude 9 can push a labeled object out of view)
    geometric_noise: bool = True
    cache: str = "auto"  # auto|memory|disk|none
    shuffle_buffer: int = 16384
    # the host noise keeps the order of its input (reproducible batches; tests):
    # out of order, a slow image holds up no batch
    deterministic_order: bool = False

    def __post_init__(self):
        ranges.check_fields(self, "batch_size", "randaugment_layers",
                            "randaugment_magnitude", "fill_value", "cutout", "crop_padding")
        if self.cutout and self.randaugment_impl == "device":
            raise InputError("--cutout runs in tf.data; --randaugment_impl=device noises on "
                             "the device, where it has no cutout: use keras_cv, keras or "
                             "reference.")
        if self.crop not in CROPS:
            raise InputError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}.")
        if self.cache not in CACHES:
            raise InputError(f"--cache must be one of {', '.join(CACHES)}, got "
                             f"{self.cache!r}.")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise InputError(f"--crop_scale must satisfy 0 < min <= max <= 1, got "
                             f"{low},{high}.")
        low, high = self.crop_ratio
        if not 0 < low <= high:
            raise InputError(f"--crop_ratio must satisfy 0 < min <= max, got {low},{high}.")
        if not 0 < self.center_crop <= 1:
            raise InputError(f"--center_crop must be in (0, 1], got {self.center_crop}.")

    @classmethod
    def for_evaluation(cls, image_size, batch_size, crop_fraction=0.0):
        """Evaluation of a model trained with `crop_fraction` (model_info.json's)."""
        return cls(image_size, batch_size, crop="random_resized" if crop_fraction else "pad",
                   center_crop=crop_fraction or 0.875)

    @property
    def eval_crop_fraction(self):
        """Evaluation's preprocessing: 0 = resize to a square (as `pad` trains), else
        resize the shorter side and keep this central fraction (as `random_resized`)."""
        return self.center_crop if self.crop == "random_resized" else 0.0
