"""RandAugment as input noise: per image in tf.data, or on the accelerator.

Host implementations (per image, inside tf.data), both well kept:
- "keras_cv" (default): KerasCV 0.9's RandAugment. It picks the N operations
  independently for every image, as the RandAugment and Noisy Student papers
  do, and ran at ~3,300 img/s per core pair on 32 px images in tf.data.
- "keras": Keras 3's own `keras.layers.RandAugment`. It picks the N operations
  once per call and evaluates all nine every time, so applied per image it is
  slower here (~750 img/s); it is the one that runs on the JAX backend inside
  a jitted step.
- "reference": the Noisy Student reference's own op table and magnitude mapping
  (augment/reference.py: 15 ops, AutoContrast to SolarizeAdd, on its 0-10 scale),
  built from TensorFlow image ops, per image in tf.data.
On the accelerator: "device" is `nstudent.augment.device.DeviceNoise`, run by
the model inside the compiled training step on uint8 batches (the flip and crop
move there too). "auto" picks "device" under JAX on a GPU or TPU, where tf.data
on the host cannot keep up, and "keras_cv" elsewhere.
Magnitudes use the RandAugment paper's 0-10 scale (10 = strongest).
"""

from nstudent import ranges
from nstudent.errors import InputError

IMPLEMENTATIONS = ("auto", "keras_cv", "keras", "reference", "device", "none")
MAX_MAGNITUDE = 10.0


def resolve_impl(impl):
    """'auto' -> the implementation for this backend and device; others unchanged."""
    if impl != "auto":
        return impl
    import keras

    if keras.backend.backend() == "jax":
        import jax

        if jax.default_backend() != "cpu":
            return "device"
    return "keras_cv"


def make_randaugment(num_ops, magnitude, impl="keras_cv", seed=None, fill_value=128.0,
                     geometric=True):
    """Returns a function: float32 image [H, W, C] in [0, 255] -> same, augmented.
    Shear, translate and rotate fill what they expose with `fill_value`, as the
    reference RandAugment does (KerasCV and Keras reflect by default). `geometric`
    False: the colour operations only (KerasCV's own switch, meant for boxes)."""
    if impl not in IMPLEMENTATIONS:
        raise InputError(f"Unknown RandAugment implementation {impl!r}; "
                         f"choose one of {', '.join(IMPLEMENTATIONS)}.")
    ranges.check("randaugment_magnitude", magnitude)
    ranges.check("randaugment_layers", num_ops)
    impl = resolve_impl(impl)
    if impl == "keras" and not geometric:
        raise InputError("--randaugment_impl=keras cannot leave out the geometric "
                         "operations (a multi-label run needs that); use keras_cv or "
                         "device.")
    if impl == "device":
        raise InputError("RandAugment 'device' runs in the model (augment.DeviceNoise), "
                         "not in tf.data.")
    if impl == "none" or num_ops == 0:
        return lambda image: image
    strength = magnitude / MAX_MAGNITUDE
    if impl == "reference":
        from nstudent.augment.reference import reference_randaugment

        layer = reference_randaugment(num_ops, magnitude, fill_value, geometric=geometric)
        return _on_rgb(layer)
    if impl == "keras_cv":
        import keras_cv

        layer = keras_cv.layers.RandAugment(
            value_range=(0, 255), augmentations_per_image=num_ops,
            magnitude=strength, geometric=geometric, seed=seed)
    else:
        import keras

        layer = keras.layers.RandAugment(
            value_range=(0, 255), num_ops=num_ops, factor=strength, seed=seed)

    if geometric:
        _fill_with_constant(layer, fill_value)
    return _on_rgb(lambda image: layer(image, training=True))


def _on_rgb(augment_rgb):
    """`augment_rgb` (RGB float32 in [0, 255]) on images of 1 or 3 channels: the colour
    operations need RGB, so a grey image runs as grey RGB and comes back grey."""
    import tensorflow as tf

    def augment(image):
        channels = image.shape[-1]
        if channels == 1:
            image = tf.image.grayscale_to_rgb(image)
        image = tf.cast(augment_rgb(image), tf.float32)
        if channels == 1:
            image = tf.reduce_mean(image, axis=-1, keepdims=True)
        return tf.clip_by_value(image, 0.0, 255.0)

    return augment


def make_cutout(size, fill_value=128.0):
    """image -> the image with one `size` x `size` square (clipped at the border) at a
    uniformly random centre filled with `fill_value`: the reference's small-image input
    cuts one out after RandAugment (half the side). 0: the identity."""
    ranges.check("cutout", size)
    if not size:
        return lambda image: image
    from nstudent.augment.reference import cutout

    return lambda image: cutout(image, size, fill_value)


def _fill_with_constant(layer, value):
    """Sets every geometric sub-layer of a KerasCV or Keras RandAugment to fill with
    `value` (neither exposes it; both read these attributes when called)."""
    subs = list(getattr(layer, "layers", [])) + list(vars(layer).values())
    filled = 0
    for sub in subs:
        if hasattr(sub, "fill_mode"):
            sub.fill_mode, sub.fill_value = "constant", float(value)
            filled += 1
    if not filled:
        raise RuntimeError(f"{type(layer).__name__} has no geometric layer to set a fill on.")
