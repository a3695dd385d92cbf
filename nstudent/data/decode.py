"""Encoded image bytes -> uint8 [H, W, C] inside tf.data, with the files that cannot be read
named and counted instead of stopping a run half-way.

Decoding follows Keras' `image_dataset_from_directory` (grey, RGBA, CMYK and
palette images become RGB for 3 channels), and goes further where TensorFlow's
decoder refuses: colour GIF, BMP and CMYK JPEG to grey for 1 channel.

A decode error inside tf.data surfaces in the middle of `fit` without the file's
name. So every file first passes a cheap check of its header and trailer
(`looks_complete`), which catches what breaks in practice: truncated copies,
empty files, HTML pages saved as .jpg. A file that fails it is either skipped
and recorded (`CorruptLog`), or stops the stage with an error that names it.
"""

import os
import threading

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # Keras' folder loader's
CORRUPT_MARKER = "nstudent-unreadable-image:"
TAIL = 32  # trailer bytes searched: some writers pad after the end marker


def _grey(rgb):
    r, g, b = (tf.cast(rgb[..., i:i + 1], tf.float32) for i in range(3))
    return tf.cast(tf.round(0.299 * r + 0.587 * g + 0.114 * b), tf.uint8)


def decode(contents, channels):
    """Any JPEG/PNG/GIF/BMP -> uint8 [H, W, channels] (channels 1 or 3), first frame."""
    if channels == 3:
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    else:
        raw = tf.io.decode_image(contents, channels=0, expand_animations=False)
        raw = tf.ensure_shape(raw, [None, None, None])
        image = tf.cond(tf.shape(raw)[-1] <= 2, lambda: raw[..., :1],
                        lambda: _grey(raw[..., :3]))
    return tf.ensure_shape(image, [None, None, channels])


def _contains(tail, pattern):
    """Whether uint8 vector `tail` holds the byte string `pattern`."""
    n = len(pattern)
    length = tf.shape(tail)[0]
    if n == 1:
        return tf.reduce_any(tf.equal(tail, pattern[0]))
    hits = tf.ones([tf.maximum(length - n + 1, 0)], tf.bool)
    for i, byte in enumerate(pattern):
        hits &= tf.equal(tail[i:length - n + 1 + i], byte)
    return tf.reduce_any(hits)


def looks_complete(contents):
    """True for bytes that start like a JPEG/PNG/GIF/BMP and end like a whole one."""
    length = tf.strings.length(contents)
    head = tf.io.decode_raw(tf.strings.substr(contents, 0, 8), tf.uint8)
    head = tf.pad(head, [[0, 8 - tf.shape(head)[0]]])
    tail = tf.io.decode_raw(
        tf.strings.substr(contents, tf.maximum(length - TAIL, 0), TAIL), tf.uint8)

    def starts(magic):
        return tf.reduce_all(tf.equal(head[:len(magic)], list(magic)))

    size_field = tf.reduce_sum(tf.cast(head[2:6], tf.int32) * [1, 256, 65536, 16777216])
    return tf.case([
        (starts(b"\xff\xd8"), lambda: _contains(tail, b"\xff\xd9")),
        (starts(b"\x89PNG\r\n\x1a\n"), lambda: _contains(tail, b"IEND")),
        (starts(b"GIF8"), lambda: _contains(tail, b";")),
        (starts(b"BM"), lambda: size_field <= length),
    ], default=lambda: tf.constant(False))


def file_looks_complete(path):
    """`looks_complete` on a file, in plain Python: reads only its first 8 and last TAIL
    bytes, so a folder of thousands is checked in seconds before any work."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(size - TAIL, 0))
        tail = f.read(TAIL)
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" in tail
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"IEND" in tail
    if head.startswith(b"GIF8"):
        return b";" in tail
    if head.startswith(b"BM"):
        return int.from_bytes(head[2:6].ljust(4, b"\0"), "little") <= size
    return False


class CorruptLog:
    """The unreadable files a source met while streaming (thread-safe, each once)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._paths = []

    def add(self, path):
        path = path.decode() if isinstance(path, bytes) else str(path)
        with self._lock:
            if path not in self._paths:
                self._paths.append(path)

    @property
    def paths(self):
        with self._lock:
            return list(self._paths)

    def record_op(self, path):
        def record(p):
            self.add(p.numpy())
            return np.int64(0)

        return tf.py_function(record, [path], tf.int64)


def decode_file(path, channels, skip_log=None):
    """Reads and decodes `path` -> (image, ok). An unreadable file gives ok=False and a
    1x1 placeholder when `skip_log` records it, else an error that names the file."""
    contents = tf.io.read_file(path)
    ok = looks_complete(contents)
    if skip_log is None:
        check = tf.debugging.Assert(ok, [CORRUPT_MARKER, path, ":"])
        with tf.control_dependencies([check]):
            return decode(contents, channels), ok

    def skip():
        with tf.control_dependencies([skip_log.record_op(path)]):
            return tf.zeros([1, 1, channels], tf.uint8)

    return tf.cond(ok, lambda: decode(contents, channels), skip), ok


def unreadable_path(error):
    """The file named by a decode_file check in a TensorFlow error message, or None."""
    text = str(error)
    if CORRUPT_MARKER not in text:
        return None
    rest = text.split(CORRUPT_MARKER, 1)[1]
    return rest.split("] [", 1)[-1].split("] [:]", 1)[0].strip("[] \n")


def scan(path, channels):
    """Decodes one file eagerly: (height, width) or an error string (for --verify_images)."""
    try:
        contents = tf.io.read_file(path)
        if not bool(looks_complete(contents)):
            return None, "truncated or not an image (header/trailer check)"
        image = decode(contents, channels)
        return tuple(int(d) for d in image.shape[:2]), None
    except (tf.errors.OpError, ValueError) as e:
        return None, str(e).splitlines()[0][:200]
