"""tf.data pipelines: decoded uint8 examples -> batches the model trains on.

Images stay uint8 until augmentation (a small cache, a cheap host transfer);
batches are float32 pixels in [0, 255] with one-hot (or soft) float32 labels,
so labeled and pseudo-labeled data look the same to the loss. With RandAugment
on the device, training batches stay uint8: the model adds all the noise.
"""

import tensorflow as tf

from nstudent.augment import make_randaugment

AUTOTUNE = tf.data.AUTOTUNE


def resize(image, size):
    """Resizes uint8 images ([H, W, C] or [B, H, W, C]) to size x size unless they are."""
    if image.shape[-3] == size and image.shape[-2] == size:
        return image
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _crop_and_flip(image, config):
    if config.crop_padding > 0:
        p = config.crop_padding
        padded = tf.pad(image, [[p, p], [p, p], [0, 0]], mode="REFLECT")
        image = tf.image.random_crop(padded, tf.shape(image))
    if config.random_flip:
        image = tf.image.random_flip_left_right(image)
    return image


def _one_hot(num_classes):
    """Class indices -> one-hot; soft labels (already [batch, classes]) pass as they are."""

    def fn(images, labels):
        if labels.shape.rank == 2:
            return images, tf.cast(labels, tf.float32)
        return images, tf.one_hot(labels, num_classes)

    return fn


def train_dataset(examples, num_classes, config, augment=True, seed=None, repeat=True):
    """Shuffled, repeated, noisy batches from (uint8 image, int or soft label) examples."""
    size = config.image_size
    ds = examples.map(lambda x, y: (resize(x, size), y), num_parallel_calls=AUTOTUNE)
    if config.cache:
        ds = ds.cache()
    ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment and config.randaugment_impl == "device":
        pass  # uint8 to the accelerator; crop, flip and RandAugment happen there
    elif augment:
        randaugment = make_randaugment(
            config.randaugment_layers, config.randaugment_magnitude,
            config.randaugment_impl, seed)

        def noise(image, label):
            image = _crop_and_flip(image, config)
            return randaugment(tf.cast(image, tf.float32)), label

        ds = ds.map(noise, num_parallel_calls=AUTOTUNE, deterministic=False)
    else:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(config.batch_size, drop_remainder=True)
    return ds.map(_one_hot(num_classes), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def eval_dataset(examples, num_classes, config):
    """Fixed preprocessing: resize only, in order, every example kept."""
    size = config.image_size
    ds = examples.map(lambda x, y: (tf.cast(resize(x, size), tf.float32), y),
                      num_parallel_calls=AUTOTUNE)
    ds = ds.batch(config.batch_size)
    return ds.map(_one_hot(num_classes), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
