"""The plain small-image CNN: what a user would train instead of the noisy student.

Three blocks of two 3x3 convolutions with batch norm and ReLU, each block ending in
2x2 max-pooling (32, 64, 128 channels times --width_scale; 0.29M parameters at 10
classes), then global average pooling, dropout and the classifier, as
`efficientnet.build_efficientnet` ends. Every claim of nstudent is measured against
it (issue 32), so it trains through the same stages, noise and exports (--model=cnn).
Layers are named blockNx_ like EfficientNet's, so freezing by block works alike.
"""

from keras import layers

WIDTHS = (32, 64, 128)
CONVS_PER_BLOCK = 2


def block_widths(width):
    return [max(8, int(round(w * width))) for w in WIDTHS]


def feature_width(width):
    return block_widths(width)[-1]


def map_sizes(side):
    """[(layer, side)] after each block's pooling ('valid' 2x2 pooling floors)."""
    sizes = []
    for index in range(len(WIDTHS)):
        side //= 2
        sizes.append((f"block{index + 1}", side))
    return sizes


def features(x, width):
    """The pooled features of rescaled images `x`."""
    for index, filters in enumerate(block_widths(width), start=1):
        for conv in range(CONVS_PER_BLOCK):
            name = f"block{index}{chr(ord('a') + conv)}_"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              kernel_initializer="he_normal", name=name + "conv")(x)
            x = layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=name + "bn")(x)
            x = layers.Activation("relu", name=name + "activation")(x)
        x = layers.MaxPooling2D(2, name=f"block{index}{chr(ord('a') + conv)}_pool")(x)
    return layers.GlobalAveragePooling2D(name="avg_pool")(x)
