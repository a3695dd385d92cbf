"""The reference's RandAugment ops (augment/reference.py) against PIL, the library
whose operations the reference's TF code reimplements, and against numpy where the
reference follows TensorFlow's transform instead (shear); its magnitude table by hand."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from nstudent.augment import make_cutout, make_randaugment
from nstudent.augment import reference as ref


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    image[:, :, 1] = image[:, :, 1] // 2 + 40  # channels with other ranges
    return image, Image.fromarray(image), tf.constant(image.astype(np.float32))


def _diff(ours, theirs):
    return np.abs(np.asarray(ours).astype(np.int64) - np.asarray(theirs).astype(np.int64))


def test_magnitude_table_at_m5_by_hand():
    """M = 5 of 10 on a 32 px image: translate and cutout constants are side // 8 = 4
    (the reference's small-image input); at 224 px the reference's 100 and 40 px."""
    expected = {"Rotate": 15.0, "Posterize": 2, "Solarize": 128, "SolarizeAdd": 55,
                "Color": 1.0, "Contrast": 1.0, "Brightness": 1.0, "Sharpness": 1.0,
                "ShearX": 0.15, "ShearY": 0.15, "TranslateX": 2.0, "TranslateY": 2.0,
                "Cutout": 2, "Invert": 0.0}
    for op, value in expected.items():
        assert ref.level_for(op, 5, 32) == pytest.approx(value), op
    assert ref.level_for("TranslateX", 5, 224) == pytest.approx(50.0)
    assert ref.level_for("Cutout", 5, 224) == 20
    assert ref.level_for("Posterize", 2, 32) == 0  # the reference's scale: all bits gone
    assert len(ref.OPS) == 15


def test_colour_ops_equal_pils(picture):
    image, pil, x = picture
    assert _diff(ref.autocontrast(x), ImageOps.autocontrast(pil)).max() == 0
    assert _diff(ref.equalize(x), ImageOps.equalize(pil)).max() == 0
    assert _diff(ref.posterize(x, 2), ImageOps.posterize(pil, 2)).max() == 0
    assert _diff(ref.solarize(x, 100), ImageOps.solarize(pil, 100)).max() == 0
    assert _diff(255.0 - x, ImageOps.invert(pil)).max() == 0
    add = np.where(image < 128, np.clip(image.astype(np.int64) + 40, 0, 255), image)
    assert _diff(ref.solarize_add(x, 40.0), add).max() == 0
    for factor in (0.1, 0.55, 1.0, 1.9):
        for ours, theirs in ((ref.contrast, ImageEnhance.Contrast),
                             (ref.brightness, ImageEnhance.Brightness),
                             (ref.sharpness, ImageEnhance.Sharpness)):
            got = tf.cast(ours(x, factor), tf.uint8)
            assert _diff(got, theirs(pil).enhance(factor)).max() == 0, (ours, factor)
        # PIL's grey conversion rounds in integer arithmetic: a grey level apart, rarely
        colour = _diff(tf.cast(ref.color(x, factor), tf.uint8),
                       ImageEnhance.Color(pil).enhance(factor))
        assert colour.max() <= 1 and (colour > 0).mean() < 0.03


def test_geometric_ops_move_pixels_and_fill(picture):
    """Translate equals PIL's affine move; rotate equals PIL's rotate but for pixels on
    a nearest-neighbour rounding edge; shear follows TensorFlow's transform as the
    reference does: output (x, y) takes input (round(x + level y), y), rounded half
    away from zero."""
    image, pil, x = picture
    fill = (128, 128, 128)
    moved = pil.transform(pil.size, Image.AFFINE, (1, 0, -3, 0, 1, 0), fillcolor=fill)
    assert _diff(ref.translate_x(x, 3.0, 128), moved).max() == 0
    down = pil.transform(pil.size, Image.AFFINE, (1, 0, 0, 0, 1, 2), fillcolor=fill)
    assert _diff(ref.translate_y(x, -2.0, 128), down).max() == 0
    rotated = _diff(ref.rotate(x, 20.0, 128), pil.rotate(20, fillcolor=fill))
    assert (rotated.max(-1) > 0).mean() < 0.01
    for level in (0.25, -0.125):  # exact in float32: no rounding ties
        expected = np.full_like(image, 128)
        for row in range(32):
            for col in range(32):
                where = col + level * row  # rounded half away from zero, as TF
                source = int(np.sign(where) * np.floor(abs(where) + 0.5))
                if 0 <= source < 32:
                    expected[row, col] = image[row, source]
        assert _diff(ref.shear_x(x, level, 128), expected).max() == 0
        sheared_y = ref.shear_y(tf.transpose(x, (1, 0, 2)), level, 128)
        assert _diff(tf.transpose(sheared_y, (1, 0, 2)), expected).max() == 0


def test_cutout_fills_one_clipped_square():
    """Every cut is an axis-aligned rectangle of fill, at most side x side, exactly
    side x side when it lies inside the image, and centred anywhere."""
    image = tf.fill((32, 32, 1), 200.0)
    cut = make_cutout(16, 7.0)
    full = 0
    for _ in range(60):
        filled = np.asarray(cut(image))[..., 0] == 7.0
        rows, cols = np.flatnonzero(filled.any(1)), np.flatnonzero(filled.any(0))
        assert filled.sum() == len(rows) * len(cols) <= 256
        assert filled[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        full += filled.sum() == 256
    assert 0 < full < 60  # inside sometimes, clipped at the border sometimes
    assert make_cutout(0)(image) is image


def test_reference_randaugment_on_grey_images_keeps_shape_range_and_grey():
    """Through make_randaugment as training uses it: grey in, grey out, in [0, 255],
    each image noised on its own (N = 2 at M = 9)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 32, 32, 1)).astype(np.float32)
    augment = make_randaugment(2, 9, "reference", fill_value=0.0)
    out = tf.data.Dataset.from_tensor_slices(images).map(augment).batch(24)
    out = np.asarray(next(iter(out)))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    changed = np.abs(out - images).reshape(24, -1).max(1) > 0
    assert changed.mean() > 0.7  # Identity is not an op of the table
    colour_only = make_randaugment(2, 9, "reference", geometric=False)
    assert colour_only(tf.constant(images[0])).shape == (32, 32, 1)
