import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nstudent.models import ModelConfig, build_efficientnet  # noqa: E402

# Tolerances for float32 results that may differ in their last digits: the same image
# batched differently (or on another x86 CPU) goes through other oneDNN kernels, which
# sum in another order. Seen here (AMD EPYC, 2026-11-29): 1.2e-5 on logits of about
# +-2, 2e-6 on a probability of 0.28, i.e. below 1e-5 relative. These allow 10x that,
# relative to the values' size, with a floor for values near 0.
BATCHING = dict(rtol=1e-4, atol=1e-5)
# Test data keeps confidences this far from any cut-off a test selects at, so that
# such differences cannot flip a ranking or a threshold (100x the above).
CUTOFF_MARGIN = 1e-3

TINY = dict(variant="b0", num_classes=4, channels=1, image_size=16, width_scale=0.25,
            depth_scale=0.25)


@pytest.fixture
def tiny_config():
    return ModelConfig(**TINY)


@pytest.fixture
def tiny_model(tiny_config):
    return build_efficientnet(tiny_config)


TOY_CLASSES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    """A learnable 4-class folder of 16 px grey PNGs: 40 train and 6 test per class."""
    root = tmp_path_factory.mktemp("toy")
    write_image_folder(root, "train", TOY_CLASSES, per_class=40, channels=1, size=16,
                       learnable=True)
    write_image_folder(root, "test", TOY_CLASSES, per_class=6, channels=1, size=16,
                       learnable=True)
    return root


def random_images(n, size, channels, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def write_image_folder(root, split, classes=("cat", "dog"), per_class=3, channels=3, size=12,
                       learnable=False):
    """root/split/<class>/<i>.png; `learnable`: class c is brighter than class c-1."""
    import tensorflow as tf

    for c, name in enumerate(classes):
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        images = random_images(per_class, size, channels, seed=c)
        if learnable:
            images = (images // 4 + 190 * c // max(len(classes) - 1, 1)).astype(np.uint8)
        for i, image in enumerate(images):
            (d / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


def toy_dataset(root, train_per_class, test_per_class, classes=("a", "b", "c", "d")):
    """A learnable 4-class, 16 px grey image folder, loaded: (info, splits)."""
    from nstudent import data

    write_image_folder(root, "train", classes, per_class=train_per_class, channels=1,
                       size=16, learnable=True)
    write_image_folder(root, "test", classes, per_class=test_per_class, channels=1,
                       size=16, learnable=True)
    return data.load(f"folder:{root}", channels=1)


def write_photo_folder(root, classes=("a", "b", "c"), per_class=10, unlabeled=0, seed=0):
    """JPEGs of mixed sizes as a user brings them: root/labeled/{train,test}/<class>/ and,
    with `unlabeled`, a flat root/unlabeled/ of which every fourth is grey. Class c is
    brighter than class c-1, so a tiny model learns it. Returns the unlabeled paths."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)

    def photo(c, grey=False):
        h, w = (int(v) for v in rng.integers(14, 40, 2))
        base = 40 + 170 * c // max(len(classes) - 1, 1)
        pixels = np.clip(rng.normal(base, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        image = Image.fromarray(pixels)
        (image.convert("L") if grey else image).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    for split, n in (("train", per_class), ("test", max(2, per_class // 3))):
        for c, name in enumerate(classes):
            d = root / "labeled" / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{i}.jpg").write_bytes(photo(c))
    paths = []
    if unlabeled:
        d = root / "unlabeled"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(unlabeled):
            path = d / f"u{i:04d}.jpg"
            path.write_bytes(photo(i % len(classes), grey=i % 4 == 0))
            paths.append(str(path))
    return paths
