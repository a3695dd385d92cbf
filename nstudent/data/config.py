"""How training batches are made: resolution, batch size, crops and the input noise.

Its own module, free of TensorFlow, so device-side training (which needs no
tf.data) can use it on a machine without TensorFlow.
"""

import dataclasses

CROPS = ("pad", "random_resized")
CACHES = ("auto", "memory", "disk", "none")


@dataclasses.dataclass(frozen=True)
class InputConfig:
    image_size: int
    batch_size: int
    randaugment_layers: int = 2
    randaugment_magnitude: float = 9.0
    randaugment_impl: str = "keras_cv"
    random_flip: bool = True
    crop: str = "pad"  # pad: resize, reflect-pad, random crop; random_resized: Inception
    crop_padding: int = 0  # pad: pixels of reflect padding before a random crop
    crop_scale: tuple = (0.08, 1.0)  # random_resized: area fraction range
    crop_ratio: tuple = (0.75, 4 / 3)  # random_resized: aspect ratio range
    center_crop: float = 0.875  # random_resized: evaluation keeps this central fraction
    cache: str = "auto"  # auto|memory|disk|none
    shuffle_buffer: int = 16384

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}.")
        if self.cache not in CACHES:
            raise ValueError(f"--cache must be one of {', '.join(CACHES)}, got "
                             f"{self.cache!r}.")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"--crop_scale must satisfy 0 < min <= max <= 1, got "
                             f"{low},{high}.")
        low, high = self.crop_ratio
        if not 0 < low <= high:
            raise ValueError(f"--crop_ratio must satisfy 0 < min <= max, got {low},{high}.")
        if not 0 < self.center_crop <= 1:
            raise ValueError(f"--center_crop must be in (0, 1], got {self.center_crop}.")

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
