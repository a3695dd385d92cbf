import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from nstudent.models import ModelConfig, build_efficientnet  # noqa: E402

TINY = dict(variant="b0", num_classes=4, channels=1, image_size=16, width_scale=0.25,
            depth_scale=0.25)


@pytest.fixture
def tiny_config():
    return ModelConfig(**TINY)


@pytest.fixture
def tiny_model(tiny_config):
    return build_efficientnet(tiny_config)


def random_images(n, size, channels, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)
