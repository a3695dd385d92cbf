"""SimCLR's views of an image, made on the device inside the compiled step.

Each call draws a new view of every image of a uint8 batch: a random resized
crop (area `crop_scale`, aspect `crop_ratio`) and flip, folded into one affine
warp by `DeviceNoise`; colour jitter with probability 0.8 (brightness, contrast
and saturation factors in [max(1 - 0.8 s, 0), 1 + 0.8 s], clamped at 0 as the
reference's are, hue shifted by up to 0.2 s of the circle, for strength s, in
that fixed order); greyscale with probability 0.2; and a
Gaussian blur with probability 0.5 (sigma 0.1-2 px, kernel a tenth of the side),
which SimCLR leaves off for small images. Grey images get brightness and
contrast only. keras.ops only: TensorFlow or JAX, XLA-compilable.
"""

import keras
from keras import ops

from nstudent.augment.device import DeviceNoise, _grey

JITTER_PROBABILITY = 0.8
GREY_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.1, 2.0)


def _per_image(x):
    return x[:, None, None, None]


class ContrastiveViews(keras.layers.Layer):
    """uint8 or float [B, H, W, C] in [0, 255] -> one random view each, float32 in
    [0, 255]. At inference (training=False) it only casts."""

    def __init__(self, crop_scale=(0.08, 1.0), crop_ratio=(0.75, 4 / 3), random_flip=True,
                 jitter_strength=1.0, blur=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.crop_scale = tuple(float(v) for v in crop_scale)
        self.crop_ratio = tuple(float(v) for v in crop_ratio)
        self.random_flip = bool(random_flip)
        self.jitter_strength = float(jitter_strength)
        self.blur = bool(blur)
        self.seed = seed
        self.warp = DeviceNoise(0, 0.0, self.random_flip, seed=seed,
                                crop_scale=self.crop_scale, crop_ratio=self.crop_ratio)
        self.seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.built = True

    def _uniform(self, batch, low=0.0, high=1.0):
        return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

    def _drawn(self, batch, probability):
        return ops.cast(self._uniform(batch) < probability, "float32")

    def call(self, images, training=True):
        images = self.warp(images, training=training)
        if not training:
            return images
        batch, channels = ops.shape(images)[0], images.shape[-1]
        x = images / 255.0
        jitter = self._drawn(batch, JITTER_PROBABILITY)
        reach = 0.8 * self.jitter_strength

        def factor():  # in [max(1 - reach, 0), 1 + reach]: never negative (s > 1.25)
            return _per_image(1.0 + jitter * self._uniform(batch, -min(reach, 1.0), reach))

        x = ops.clip(x * factor(), 0.0, 1.0)  # brightness
        mean = ops.mean(_grey(x), axis=(1, 2, 3), keepdims=True)
        x = ops.clip(mean + factor() * (x - mean), 0.0, 1.0)  # contrast
        if channels == 3:
            grey = _grey(x)
            x = ops.clip(grey + factor() * (x - grey), 0.0, 1.0)  # saturation
            shift = jitter * self._uniform(batch, -0.2 * self.jitter_strength,
                                           0.2 * self.jitter_strength)
            hsv = ops.image.rgb_to_hsv(x)
            hue = ops.mod(hsv[..., :1] + _per_image(shift), 1.0)
            x = ops.clip(ops.image.hsv_to_rgb(ops.concatenate([hue, hsv[..., 1:]], -1)),
                         0.0, 1.0)
            to_grey = _per_image(self._drawn(batch, GREY_PROBABILITY)) > 0
            x = ops.where(to_grey, ops.repeat(_grey(x), 3, axis=-1), x)
        if self.blur:
            blurred = self._gaussian_blur(x, self._uniform(batch, *BLUR_SIGMA))
            x = ops.where(_per_image(self._drawn(batch, BLUR_PROBABILITY)) > 0, blurred, x)
        return x * 255.0

    @staticmethod
    def _gaussian_blur(x, sigma):
        """A separable Gaussian of a per-image sigma: shifted slices weighted per image
        (a convolution takes one kernel for the whole batch)."""
        height, width = x.shape[1], x.shape[2]
        radius = max(1, min(height, width) // 20)
        offsets = ops.arange(-radius, radius + 1, dtype="float32")
        weights = ops.exp(-ops.square(offsets)[None, :] / (2.0 * ops.square(sigma)[:, None]))
        weights = weights / ops.sum(weights, axis=1, keepdims=True)  # [batch, taps]
        padded = ops.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
        x = sum(_per_image(weights[:, k]) * padded[:, :, k:k + width, :]
                for k in range(2 * radius + 1))
        padded = ops.pad(x, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="reflect")
        return sum(_per_image(weights[:, k]) * padded[:, k:k + height, :, :]
                   for k in range(2 * radius + 1))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "crop_scale": self.crop_scale,
                "crop_ratio": self.crop_ratio, "random_flip": self.random_flip,
                "jitter_strength": self.jitter_strength, "blur": self.blur,
                "seed": self.seed}
