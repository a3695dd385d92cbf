"""Small building blocks for noise in the network."""

from keras import layers


def stochastic_depth(rate, name=None):
    """Drops a residual branch for whole samples, independently per sample.

    Keras' Dropout with a per-sample noise shape is exactly stochastic depth
    (drop path): the branch of a dropped sample becomes zero, kept samples are
    scaled by 1 / (1 - rate), and at inference the layer is the identity.
    """
    return layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=name)
