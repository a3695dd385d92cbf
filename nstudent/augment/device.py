"""RandAugment on the accelerator, inside the compiled training step.

Why not `keras.layers.RandAugment` there: it draws its operations once per
batch, evaluates all eleven on every image for each of the N rounds, and is
marked `supports_jit = False`, which silently turns XLA off for any model that
holds it. `DeviceNoise` draws the operations per image, as the RandAugment and
Noisy Student papers do, runs each colour operation once per round as a
per-image blend whose neutral setting leaves the images that did not draw it
unchanged, and folds every geometric operation, the flip and the padded crop
into one affine warp per image. It is written in `keras.ops` only, so it runs
under JAX or TensorFlow, compiles with XLA, and takes uint8 batches: the host
ships raw pixels and does no per-image work.

Magnitudes follow the RandAugment paper's ImageNet settings at M = 10
(rotate 30 degrees, shear 0.3, translate 0.45 of the side, enhance factors
1 +- 0.9, solarize threshold down to 0, posterize down to 4 bits), scaled by
M / 10. The colour operations run first and the warp last; what the warp exposes
is filled with a constant grey (FILL_VALUE).
"""

import math

import keras
from keras import ops

from nstudent import ranges

OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color",
       "posterize", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
       "translate_x", "translate_y")
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
MAX_MAGNITUDE = 10.0
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.45  # of the image side
MAX_ENHANCE = 0.9
GREY_WEIGHTS = (0.299, 0.587, 0.114)
# What a warp exposes (rotate, shear, translate, the padded crop) is filled with this
# grey, as the reference RandAugment does; reflecting would mirror an object into a
# duplicate at magnitude 9. 0 may suit black-background images (--fill_value).
FILL_VALUE = 128.0


def _blend(degenerate, images, factor):
    """PIL's ImageEnhance: factor 1 is the image, 0 the degenerate one."""
    return ops.clip(degenerate + factor[:, None, None, None] * (images - degenerate), 0, 255)


def _grey(images):
    if images.shape[-1] != 3:
        return images
    r, g, b = GREY_WEIGHTS
    return r * images[..., 0:1] + g * images[..., 1:2] + b * images[..., 2:3]


def _smooth(images):
    """PIL's SMOOTH filter (centre 5, neighbours 1, over 13), the degenerate image of
    Sharpness; nine shifted slices fuse into one kernel where a convolution would not."""
    height, width = images.shape[1], images.shape[2]
    padded = ops.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="symmetric")  # = edge for 1 px
    total = 4.0 * images
    for dy in range(3):
        for dx in range(3):
            total = total + padded[:, dy:dy + height, dx:dx + width, :]
    return total / 13.0


def autocontrast(images):
    """Stretches every channel of every image to span [0, 255]."""
    low = ops.min(images, axis=(1, 2), keepdims=True)
    high = ops.max(images, axis=(1, 2), keepdims=True)
    span = high - low
    stretched = (images - low) * (255.0 / ops.maximum(span, 1e-3))
    return ops.where(span > 0, stretched, images)


def equalize(images):
    """Histogram equalisation per image and channel (one scatter-add for the batch)."""
    batch, height, width, channels = ops.shape(images)
    rows, pixels = batch * channels, height * width
    levels = ops.cast(ops.clip(ops.round(images), 0, 255), "int32")
    levels = ops.reshape(ops.transpose(levels, (0, 3, 1, 2)), (rows, pixels))
    ids = levels + 256 * ops.arange(rows, dtype="int32")[:, None]
    hist = ops.segment_sum(ops.ones((rows * pixels,), "float32"), ops.reshape(ids, (-1,)),
                           num_segments=rows * 256)
    hist = ops.reshape(hist, (rows, 256))
    cdf = ops.cumsum(hist, axis=1)
    first = ops.min(ops.where(hist > 0, cdf, float(pixels)), axis=1, keepdims=True)
    spread = float(pixels) - first
    lut = ops.round(255.0 * (cdf - first) / ops.maximum(spread, 1.0))
    out = ops.where(spread > 0, ops.take_along_axis(lut, levels, axis=1),
                    ops.cast(levels, "float32"))
    out = ops.transpose(ops.reshape(out, (batch, channels, height, width)), (0, 2, 3, 1))
    return ops.cast(out, images.dtype)


def _affine(a, b, c, d, tx=None, ty=None):
    """[batch, 3, 3] output->input maps in centred pixel coordinates."""
    zero, one = ops.zeros_like(a), ops.ones_like(a)
    tx = zero if tx is None else tx
    ty = zero if ty is None else ty
    return ops.stack([ops.stack([a, b, tx], -1), ops.stack([c, d, ty], -1),
                      ops.stack([zero, zero, one], -1)], 1)


def _translation(tx, ty):
    one = ops.ones_like(tx)
    return _affine(one, 0 * one, 0 * one, one, tx, ty)


class DeviceNoise(keras.layers.Layer):
    """Per-image RandAugment, random flip and a padded crop (or, with `crop_scale`, an
    Inception-style random resized crop) on a [B, H, W, C] batch.

    Input pixels in [0, 255], any dtype; output float32 in [0, 255]. At
    inference (training=False) it only casts. `geometric` False draws from the
    colour operations only (no rotate, shear or translate: multi-label runs).
    """

    def __init__(self, num_ops=2, magnitude=9.0, random_flip=True, crop_padding=0,
                 seed=None, crop_scale=None, crop_ratio=(0.75, 4 / 3),
                 fill_value=FILL_VALUE, geometric=True, **kwargs):
        super().__init__(**kwargs)
        ranges.check("randaugment_magnitude", magnitude)
        ranges.check("randaugment_layers", num_ops)
        self.num_ops = int(num_ops)
        self.magnitude = float(magnitude)
        self.random_flip = bool(random_flip)
        self.crop_padding = int(crop_padding)
        # random resized crop (area fraction range) instead of the padded crop
        self.crop_scale = None if crop_scale is None else tuple(float(v) for v in crop_scale)
        self.crop_ratio = tuple(float(v) for v in crop_ratio)
        self.fill_value = float(fill_value)
        self.geometric = bool(geometric)
        self.ops = OPS if self.geometric else tuple(o for o in OPS if o not in GEOMETRIC_OPS)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights: fit() need not call it on sample data to build it

    def _uniform(self, batch, low=0.0, high=1.0):
        return keras.random.uniform((batch,), low, high, seed=self.seed_generator)

    def _signed(self, batch, scale):
        sign = ops.where(self._uniform(batch) < 0.5, -1.0, 1.0)
        return sign * scale * self.magnitude / MAX_MAGNITUDE

    def _colour_round(self, images, pick):
        """One RandAugment round's colour operations; `pick(name)` is 1.0 where drawn."""
        batch = ops.shape(images)[0]
        m = self.magnitude / MAX_MAGNITUDE

        def factor(name):
            return 1.0 + pick(name) * self._signed(batch, MAX_ENHANCE)

        def chosen(name):
            return pick(name)[:, None, None, None] > 0

        images = ops.where(chosen("autocontrast"), autocontrast(images), images)
        images = ops.where(chosen("equalize"), equalize(images), images)
        threshold = 256.0 - pick("solarize") * 256.0 * m
        images = ops.where(images >= threshold[:, None, None, None], 255.0 - images, images)
        step = ops.power(2.0, pick("posterize") * round(4 * m))[:, None, None, None]
        images = ops.where(step > 1, ops.floor(images / step) * step, images)
        grey = _grey(images)
        images = _blend(grey, images, factor("color"))
        mean = ops.mean(_grey(images), axis=(1, 2, 3), keepdims=True)
        images = _blend(mean, images, factor("contrast"))
        images = _blend(ops.zeros_like(images), images, factor("brightness"))
        return _blend(_smooth(images), images, factor("sharpness"))

    def _geometry_round(self, batch, size, pick):
        angle = pick("rotate") * self._signed(batch, MAX_ROTATE_DEGREES * math.pi / 180.0)
        cos, sin = ops.cos(angle), ops.sin(angle)
        shear_x = pick("shear_x") * self._signed(batch, MAX_SHEAR)
        shear_y = pick("shear_y") * self._signed(batch, MAX_SHEAR)
        one = ops.ones_like(angle)
        shift = ops.stack([pick(n) * self._signed(batch, MAX_TRANSLATE) for n in
                           ("translate_x", "translate_y")], -1) * ops.array(size, "float32")
        return ops.matmul(ops.matmul(
            _affine(cos, -sin, sin, cos), _affine(one, shear_x, shear_y, one)),
            _translation(shift[:, 0], shift[:, 1]))

    def call(self, images, training=True):
        images = ops.cast(images, "float32")
        if not training:
            return images
        batch, height, width, _ = ops.shape(images)
        zero = ops.zeros((batch,), "float32")
        warp = (_translation(zero, zero) if self.crop_scale is None
                else self._resized_crop(batch, (width, height)))
        for _ in range(self.num_ops):
            drawn = keras.random.randint((batch,), 0, len(self.ops),
                                         seed=self.seed_generator)

            def pick(name, drawn=drawn):
                return ops.cast(ops.equal(drawn, self.ops.index(name)), "float32")

            images = self._colour_round(images, pick)
            if self.geometric:
                warp = ops.matmul(warp, self._geometry_round(batch, (width, height), pick))
        if self.random_flip:
            flip = ops.where(self._uniform(batch) < 0.5, -1.0, 1.0)
            warp = ops.matmul(warp, _affine(flip, zero, zero, zero + 1))
        if self.crop_padding > 0 and self.crop_scale is None:
            p = self.crop_padding
            shift = [ops.floor(self._uniform(batch, -p, p + 1)) for _ in range(2)]
            warp = ops.matmul(warp, _translation(*shift))
        # centred coordinates -> pixel coordinates, as affine_transform reads them
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        warp = ops.matmul(ops.matmul(_translation(zero + cx, zero + cy), warp),
                          _translation(zero - cx, zero - cy))
        transform = ops.concatenate(
            [ops.reshape(warp[:, :2, :], (-1, 6)), ops.zeros((batch, 2), "float32")], -1)
        images = ops.image.affine_transform(images, transform, fill_mode="constant",
                                            fill_value=self.fill_value)
        return ops.clip(images, 0.0, 255.0)

    def _resized_crop(self, batch, size):
        """Inception crop as a warp: a window of random area and aspect ratio, at a random
        place inside the image, stretched over the output."""
        area = self._uniform(batch, *self.crop_scale)
        ratio = ops.exp(self._uniform(batch, *(math.log(r) for r in self.crop_ratio)))
        w = ops.minimum(ops.sqrt(area * ratio), 1.0)  # window side / image side
        h = ops.minimum(ops.sqrt(area / ratio), 1.0)
        cx = (self._uniform(batch) - 0.5) * (1.0 - w) * size[0]
        cy = (self._uniform(batch) - 0.5) * (1.0 - h) * size[1]
        zero = ops.zeros_like(w)
        return ops.matmul(_translation(cx, cy), _affine(w, zero, zero, h))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "num_ops": self.num_ops,
                "magnitude": self.magnitude, "random_flip": self.random_flip,
                "crop_padding": self.crop_padding, "seed": self.seed,
                "crop_scale": self.crop_scale, "crop_ratio": self.crop_ratio,
                "fill_value": self.fill_value, "geometric": self.geometric}


def device_noise(config, seed=None):
    """The DeviceNoise an InputConfig asks for, or None when noise is made on the host.
    With --crop=random_resized the Inception crop is not here: tf.data cuts it from
    the image at its own aspect ratio with the host path's very function (one crop
    and resize per image, which a mixed-size folder needs anyway) and ships it at the
    resolution; a square batch on the device has lost that aspect ratio."""
    if config.randaugment_impl != "device":
        return None
    padding = config.crop_padding if config.crop == "pad" else 0
    return DeviceNoise(config.randaugment_layers, config.randaugment_magnitude,
                       config.random_flip, padding, seed=seed,
                       fill_value=config.fill_value, geometric=config.geometric_noise,
                       name="device_noise")
