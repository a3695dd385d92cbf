"""The Noisy Student reference's RandAugment op table on its 0-10 magnitude scale.

google-research/noisystudent (randaugment.py) picks, N times per image, one of 15
operations uniformly and applies it at the fixed magnitude M (0-10; geometric ops
take a random sign), optionally with Cutout among them; its small-image (CIFAR/SVHN)
input then cuts out one square of a quarter of the side (`cutout`). The arguments
per op at magnitude M, as the reference maps them (`level_for`):

| op | argument at M |
|---|---|
| AutoContrast, Equalize, Invert | none |
| Rotate | +-30 M/10 degrees |
| Posterize | keep int(4 M/10) bits (the reference's scale: M < 2.5 keeps none) |
| Solarize | invert pixels >= int(256 M/10) |
| SolarizeAdd | add int(110 M/10) to pixels < 128 |
| Color, Contrast, Brightness, Sharpness | blend factor 1.8 M/10 + 0.1 (PIL's enhancers) |
| ShearX, ShearY | +-0.3 M/10 |
| TranslateX, TranslateY | +-translate M/10 px (side // 8 at up to 64 px, as the reference's small-image input; 100 px at 224, in proportion, above) |
| Cutout (op) | a square of side 2 int(cutout M/10) (cutout = side // 8, or 40 px at 224) |

Images are float32 [H, W, 3] in [0, 255] (grey images come in as grey RGB) and are
rounded to uint8 first, as the reference works on uint8. What shear, rotate and
translate expose is filled with `fill_value` (the reference: 128). One deviation:
Contrast blends towards the mean grey level, as PIL's ImageEnhance.Contrast (the
reference's TF code divides the pixel count by 256 instead of the grey levels).
"""

import math

import tensorflow as tf

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
       "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX",
       "TranslateY", "SolarizeAdd")
MAX_LEVEL = 10.0
SMALL_SIDE = 64  # up to here the reference's small-image constants: side // 8


def constants(side):
    """(translate, cutout) in pixels at magnitude 10 for an image of `side` px."""
    if side <= SMALL_SIDE:
        return max(side // 8, 1), max(side // 8, 1)
    return round(100 * side / 224), round(40 * side / 224)


def level_for(op, magnitude, side):
    """The op's argument at `magnitude` (before a geometric op's random sign)."""
    m = magnitude / MAX_LEVEL
    translate, cutout = constants(side)
    return {
        "Rotate": 30.0 * m, "Posterize": int(4 * m), "Solarize": int(256 * m),
        "SolarizeAdd": int(110 * m), "Color": 1.8 * m + 0.1, "Contrast": 1.8 * m + 0.1,
        "Brightness": 1.8 * m + 0.1, "Sharpness": 1.8 * m + 0.1, "ShearX": 0.3 * m,
        "ShearY": 0.3 * m, "TranslateX": translate * m, "TranslateY": translate * m,
        "Cutout": int(cutout * m),
    }.get(op, 0.0)


def _blend(degenerate, image, factor):
    """degenerate + factor x (image - degenerate), clipped to [0, 255] (PIL's enhancers)."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grey(image):
    return tf.image.rgb_to_grayscale(image)


def autocontrast(image):
    lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
    hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
    scaled = (image - lo) * 255.0 / tf.maximum(hi - lo, 1e-6)
    return tf.where(hi > lo, tf.clip_by_value(scaled, 0.0, 255.0), image)


def equalize(image):
    """PIL's ImageOps.equalize per channel: a lookup table from the cumulative
    histogram in steps of (pixels - the last level's count) // 255."""
    channels = []
    for c in range(3):
        x = tf.cast(image[..., c], tf.int32)
        hist = tf.math.bincount(tf.reshape(x, [-1]), minlength=256, maxlength=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
        lut = (tf.cumsum(hist) + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
        channels.append(tf.where(step > 0, tf.gather(lut, x), x))
    return tf.cast(tf.stack(channels, -1), tf.float32)


def posterize(image, bits):
    shift = 8 - bits
    x = tf.cast(image, tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift),
                   tf.float32)


def solarize(image, threshold):
    return tf.where(image < float(threshold), image, 255.0 - image)


def solarize_add(image, addition, threshold=128.0):
    return tf.where(image < threshold, tf.clip_by_value(image + addition, 0.0, 255.0), image)


def color(image, factor):
    grey = tf.round(_grey(image))  # PIL's convert("L") rounds to a grey level
    return _blend(tf.image.grayscale_to_rgb(grey), image, factor)


def contrast(image, factor):
    mean = tf.round(tf.reduce_mean(_grey(image)))
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image, factor):
    return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
    """PIL's ImageEnhance.Sharpness: blend with the image smoothed by its 3x3 SMOOTH
    kernel ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13); the border keeps its pixels."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.round(tf.clip_by_value(smooth, 0.0, 255.0))
    inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    smooth = tf.where(inner > 0, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return _blend(smooth, image, factor)


def _transform(image, matrix, fill_value):
    """Output pixel (x, y) takes input pixel matrix @ (x, y, 1) (the reference's
    contrib_image.transform convention), nearest neighbour, `fill_value` outside."""
    flat = tf.reshape(tf.cast(matrix, tf.float32), [1, 9])[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=flat, output_shape=tf.shape(image)[:2],
        fill_value=float(fill_value), interpolation="NEAREST", fill_mode="CONSTANT")[0]


def rotate(image, degrees, fill_value):
    """Rotates by `degrees` about the centre."""
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    a = degrees * math.pi / 180.0
    cos, sin = tf.cos(a), tf.sin(a)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    matrix = tf.stack([[cos, -sin, cx - cos * cx + sin * cy],
                       [sin, cos, cy - sin * cx - cos * cy], [0.0, 0.0, 1.0]])
    return _transform(image, matrix, fill_value)


def shear_x(image, level, fill_value):
    return _transform(image, [[1.0, level, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                      fill_value)


def shear_y(image, level, fill_value):
    return _transform(image, [[1.0, 0.0, 0.0], [level, 1.0, 0.0], [0.0, 0.0, 1.0]],
                      fill_value)


def translate_x(image, pixels, fill_value):
    """Moves the content `pixels` to the right."""
    return _transform(image, [[1.0, 0.0, -pixels], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                      fill_value)


def translate_y(image, pixels, fill_value):
    """Moves the content `pixels` down."""
    return _transform(image, [[1.0, 0.0, 0.0], [0.0, 1.0, -pixels], [0.0, 0.0, 1.0]],
                      fill_value)


def cutout(image, side, fill_value):
    """Fills a `side` x `side` square (clipped at the border) centred on a uniformly
    random pixel with `fill_value`, as the reference's cutout (its pad_size is side / 2)."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    cy = tf.random.uniform([], 0, h, tf.int32)
    cx = tf.random.uniform([], 0, w, tf.int32)
    top, left = cy - side // 2, cx - side // 2
    rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return tf.where(inside[:, :, None], tf.fill(tf.shape(image), float(fill_value)), image)


def _signed(value):
    return tf.where(tf.random.uniform([]) < 0.5, -value, value)


def apply_op(op, image, magnitude, fill_value):
    """One op of the table at `magnitude` (a geometric op's sign drawn here)."""
    side = int(image.shape[0] or SMALL_SIDE)
    level = level_for(op, magnitude, side)
    if op == "AutoContrast":
        return autocontrast(image)
    if op == "Equalize":
        return equalize(image)
    if op == "Invert":
        return 255.0 - image
    if op == "Posterize":
        return posterize(image, level)
    if op == "Solarize":
        return solarize(image, level)
    if op == "SolarizeAdd":
        return solarize_add(image, float(level))
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return {"Color": color, "Contrast": contrast, "Brightness": brightness,
                "Sharpness": sharpness}[op](image, level)
    if op == "Cutout":
        return cutout(image, 2 * level, fill_value)
    geometric = {"Rotate": rotate, "ShearX": shear_x, "ShearY": shear_y,
                 "TranslateX": translate_x, "TranslateY": translate_y}[op]
    return geometric(image, _signed(tf.constant(level, tf.float32)), fill_value)


def reference_randaugment(num_ops, magnitude, fill_value=128.0, cutout_op=False,
                          geometric=True):
    """image [H, W, 3] float32 in [0, 255] -> the same, with `num_ops` ops of the table
    each drawn uniformly (`cutout_op`: Cutout joins the table; `geometric` False: the
    colour ops only, for multi-label runs)."""
    ops = [op for op in OPS if geometric or op not in (
        "Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")]
    if cutout_op:
        ops.append("Cutout")

    def augment(image):
        shape = image.shape
        image = tf.round(tf.clip_by_value(image, 0.0, 255.0))
        for _ in range(num_ops):
            pick = tf.random.uniform([], 0, len(ops), tf.int32)
            branches = [lambda op=op, x=image: apply_op(op, x, magnitude, fill_value)
                        for op in ops]
            image = tf.ensure_shape(tf.switch_case(pick, branches), shape)
        return image

    return augment
