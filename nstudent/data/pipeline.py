"""tf.data pipelines: decoded uint8 examples -> batches the model trains on.

Images stay uint8 until augmentation (a small cache, a cheap host transfer);
batches are float32 pixels in [0, 255] with one-hot (or soft) float32 labels,
so labeled and pseudo-labeled data look the same to the loss. With RandAugment
on the device, training batches stay uint8: the model adds the noise (all of it
but the Inception crop, which is cut here at the image's own aspect ratio).

Two crops: `pad` resizes every image to a square, then pads (--fill_value) and crops
back (small images); `random_resized` is the Inception crop used for photos
(a random area and aspect ratio, resized to the training resolution), and
evaluation then resizes the shorter side and keeps the central fraction: the
train/test object-size discrepancy that fine-tuning at a higher resolution fixes.
"""

import atexit
import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from nstudent.augment import make_cutout, make_randaugment

AUTOTUNE = tf.data.AUTOTUNE
MEMORY_CACHE_BUDGET = 0.25  # cache=auto: at most this fraction of RAM
STREAM_SHUFFLE_BUFFER = 1024  # decoded images buffered when the source already shuffles
RANDOM_RESIZED_KEEP = 2  # random_resized caches images with sides up to 2x the resolution


def _to_uint8(image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _bilinear(image, new_size):
    """Bilinear resize, antialiased where a side shrinks. Growing, the antialias
    kernel is plain bilinear (equal up to float rounding) but ~8x slower on a CPU."""
    hw = tf.shape(image)[-3:-1]
    new_size = tf.convert_to_tensor(new_size, tf.int32)
    shrinks = tf.reduce_any(new_size < hw)
    static = tf.get_static_value(shrinks)
    if static is not None:
        return _to_uint8(tf.image.resize(image, new_size, antialias=bool(static)))
    return _to_uint8(tf.cond(shrinks,
                             lambda: tf.image.resize(image, new_size, antialias=True),
                             lambda: tf.image.resize(image, new_size, antialias=False)))


def resize(image, size):
    """Resizes uint8 images ([H, W, C] or [B, H, W, C]) to size x size unless they are."""
    if image.shape[-3] == size and image.shape[-2] == size:
        return image
    return _bilinear(image, (size, size))


def resize_shorter(image, side):
    """uint8 [H, W, C] or [B, H, W, C]: the shorter side to `side`, aspect ratio kept."""
    shape = tf.cast(tf.shape(image)[-3:-1], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_min(shape)
    return _bilinear(image, tf.cast(tf.round(shape * scale), tf.int32))


def center_crop(image, size, fraction):
    """Resize the shorter side to size / fraction, keep the central size x size (one
    image, or a batch of images of one shape)."""
    image = resize_shorter(image, int(round(size / fraction)))
    shape = tf.shape(image)
    top, left = (shape[-3] - size) // 2, (shape[-2] - size) // 2
    crop = image[..., top:top + size, left:left + size, :]
    return tf.ensure_shape(crop, image.shape[:-3] + [size, size, image.shape[-1]])


def preprocess_eval(image, size, crop_fraction=0.0):
    """Evaluation and pseudo-labeling: a square resize, or a centre crop (fraction > 0).
    A batch must hold images of one shape (pad-free resizing is per image)."""
    if crop_fraction:
        return center_crop(image, size, crop_fraction)
    return resize(image, size)


def random_resized_crop(image, config, seed):
    """Inception-style crop: area in config.crop_scale, aspect in config.crop_ratio.
    `seed`: a [2] int tensor; the box is a function of it (stateless), so parallel
    calls draw the same boxes in any order and a resumed stream draws them again."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=config.crop_ratio,
        area_range=config.crop_scale, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    return resize(tf.ensure_shape(crop, [None, None, image.shape[-1]]), config.image_size)


def element_seed(seed, index, salt=0):
    """The [2] seed of the stream's element `index` for one kind of stateless noise."""
    base = tf.constant((int(seed or 0) * 7919 + salt) % (2 ** 31), tf.int64)
    return tf.stack([base, tf.cast(index, tf.int64)])


def _prepared(image, config):
    """What the cache holds: pad, a square at the resolution; random_resized, the
    image with its shorter side at most RANDOM_RESIZED_KEEP x the resolution."""
    if config.crop == "pad":
        return resize(image, config.image_size)
    limit = RANDOM_RESIZED_KEEP * config.image_size
    shorter = tf.reduce_min(tf.shape(image)[:2])
    return tf.cond(shorter > limit, lambda: resize_shorter(image, limit), lambda: image)


def _crop_and_flip(image, index, config, seed=None):
    """The crop and flip of the stream's element `index`: stateless, so they are the
    same whatever order parallel calls run in, and after a resume."""
    if config.crop == "random_resized":
        image = random_resized_crop(image, config, element_seed(seed, index, 1))
    elif config.crop_padding > 0:
        p = config.crop_padding
        padded = tf.pad(image, [[p, p], [p, p], [0, 0]],
                        constant_values=tf.cast(config.fill_value, image.dtype))
        image = tf.image.stateless_random_crop(padded, tf.shape(image),
                                               element_seed(seed, index, 2))
    if config.random_flip:
        image = tf.image.stateless_random_flip_left_right(image, element_seed(seed, index, 3))
    return image


def _one_hot(num_classes):
    """Class indices -> one-hot; soft labels (already [batch, classes]) pass as they are."""

    def fn(images, labels):
        if labels.shape.rank == 2:
            return images, tf.cast(labels, tf.float32)
        return images, tf.one_hot(labels, num_classes)

    return fn


def cache_bytes_per_image(config, channels):
    side = config.image_size * (RANDOM_RESIZED_KEEP if config.crop == "random_resized"
                                else 1)
    return side * side * channels


def memory_budget():
    return MEMORY_CACHE_BUDGET * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_cache(config, num_examples, channels):
    """auto -> memory when the prepared set fits MEMORY_CACHE_BUDGET of RAM, else none."""
    if config.cache != "auto":
        return config.cache
    if num_examples is None:
        return "none"
    need = num_examples * cache_bytes_per_image(config, channels)
    return "memory" if need <= memory_budget() else "none"


_cache_dirs = []


def _disk_cache_file():
    if not _cache_dirs:
        _cache_dirs.append(tempfile.mkdtemp(prefix="nstudent-cache-"))
        atexit.register(shutil.rmtree, _cache_dirs[0], True)
    return tempfile.mktemp(dir=_cache_dirs[0])


def _cache(ds, mode, num_examples):
    if mode != "none":
        logging.info("Caching %s prepared images in %s.", num_examples or "the", mode)
    if mode == "memory":
        return ds.cache()
    if mode == "disk":
        return ds.cache(_disk_cache_file())
    return ds


def noise_seed(seed, start):
    """The host noise's seed for a stream resumed after `start` batches: KerasCV draws
    from one generator that several map calls share, in no fixed order, so its place
    cannot be saved; a resumed stream draws anew instead of replaying the first draws."""
    if seed is None or not start:
        return seed
    return (int(seed) * 1_000_003 + int(start)) % (2 ** 31 - 1)


def train_dataset(examples, num_classes, config, augment=True, seed=None, repeat=True,
                  num_examples=None, shuffled=False, start=0):
    """Shuffled, repeated, noisy batches from (uint8 image, int or soft label) examples.

    `augment=False` gives clean batches: the evaluation preprocessing, shuffled.
    `num_examples` lets cache=auto decide whether the prepared set fits in memory.
    `shuffled`: the examples come reshuffled every pass (Split.dataset(shuffle_seed=)),
    so without a cache a small buffer suffices and the first batch comes at once.
    `start`: batches already trained on (a resumed stage). The seeded order is a
    function of the seed alone, so the stream continues at batch `start`; the
    examples before it are skipped ahead of the noise (only decoding and shuffling
    are replayed, and decoding only without a cache).
    """
    channels = examples.element_spec[0].shape[-1]
    if augment:
        ds = examples.map(lambda x, y: (_prepared(x, config), y), num_parallel_calls=AUTOTUNE)
    else:
        ds = examples.map(lambda x, y: (preprocess_eval(x, config.image_size,
                                                        config.eval_crop_fraction), y),
                          num_parallel_calls=AUTOTUNE)
    cache = resolve_cache(config, num_examples, channels)
    ds = _cache(ds, cache, num_examples)
    buffer = (min(config.shuffle_buffer, STREAM_SHUFFLE_BUFFER) if shuffled and
              cache == "none" else config.shuffle_buffer)
    ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate()  # the element's place in the stream keys its crop and flip
    if start:
        ds = ds.skip(int(start) * config.batch_size)
    if augment and config.randaugment_impl == "device":
        # uint8 to the accelerator, where flip, RandAugment and the padded crop happen;
        # the Inception crop is cut here, from the image at its own aspect ratio
        if config.crop == "random_resized":
            ds = ds.map(lambda i, xy: (random_resized_crop(
                xy[0], config, element_seed(seed, i, 1)), xy[1]),
                num_parallel_calls=AUTOTUNE, deterministic=config.deterministic_order)
        else:
            ds = ds.map(lambda i, xy: xy)
    elif augment:
        randaugment = make_randaugment(
            config.randaugment_layers, config.randaugment_magnitude,
            config.randaugment_impl, noise_seed(seed, start), config.fill_value,
            config.geometric_noise)
        cutout = make_cutout(config.cutout, config.fill_value)

        def noise(index, example):
            image, label = example
            image = _crop_and_flip(image, index, config, seed)
            return cutout(randaugment(tf.cast(image, tf.float32))), label

        ds = ds.map(noise, num_parallel_calls=AUTOTUNE,
                    deterministic=config.deterministic_order)
    else:
        ds = ds.map(lambda i, xy: (tf.cast(xy[0], tf.float32), xy[1]),
                    num_parallel_calls=AUTOTUNE)
    ds = ds.batch(config.batch_size, drop_remainder=True)
    return ds.map(_one_hot(num_classes), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def clean_batches(images, config, seed=None):
    """Shuffled float32 batches of images (no labels) with evaluation preprocessing:
    what batch-norm statistics are recomputed on."""
    size, fraction = config.image_size, config.eval_crop_fraction
    ds = images.map(lambda x: tf.cast(preprocess_eval(x, size, fraction), tf.float32),
                    num_parallel_calls=AUTOTUNE)
    ds = ds.shuffle(config.shuffle_buffer, seed=seed)
    return ds.batch(config.batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def eval_dataset(examples, num_classes, config):
    """Fixed preprocessing (resize, or centre crop for random_resized), in order."""
    size, fraction = config.image_size, config.eval_crop_fraction
    ds = examples.map(lambda x, y: (tf.cast(preprocess_eval(x, size, fraction), tf.float32),
                                    y), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(config.batch_size)
    return ds.map(_one_hot(num_classes), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
