"""EfficientNet B0-B7 and L2 from one builder, with the noise Noisy Student needs.

The model is fully convolutional up to global pooling and takes inputs of any
spatial size, so a generation can be fine-tuned or served at another
resolution without rebuilding. Inputs are float pixels in [0, 255]; the output
is logits (softmax lives in the loss and in the serving signature).

Two stride plans (`STAGE_STRIDES`): ImageNet's (total stride 32: a 7x7 map at the
head at 224 px, but 1x1 at 32 px) and the reference's small-image plan for 32 px
inputs (google-research/noisystudent, CIFAR/SVHN: stages 2 and 3 at stride 1, total
stride 8, a 4x4 map at the head at 28-32 px). "auto" picks the small plan from
SMALL_IMAGE_MIN to SMALL_IMAGE_MAX px, the sizes of the datasets it was made for
(below, at 16 px, either plan ends at 1-2 px and ImageNet's costs less).
"""

import dataclasses
import math

import keras
from keras import layers

from nstudent import ranges
from nstudent.errors import InputError
from nstudent.models.layers import stochastic_depth


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float = 0.25


# The seven MBConv stages of EfficientNet-B0 (Tan & Le, 2019, table 1).
B0_STAGES = (
    BlockArgs(3, 1, 32, 16, 1, 1),
    BlockArgs(3, 2, 16, 24, 6, 2),
    BlockArgs(5, 2, 24, 40, 6, 2),
    BlockArgs(3, 3, 40, 80, 6, 2),
    BlockArgs(5, 3, 80, 112, 6, 1),
    BlockArgs(5, 4, 112, 192, 6, 2),
    BlockArgs(3, 1, 192, 320, 6, 1),
)


# Strides of the seven stages per plan (the stem's is ModelConfig.stem_stride).
STAGE_STRIDES = {
    "imagenet": tuple(stage.strides for stage in B0_STAGES),  # 1,2,2,2,1,2,1
    "small": (1, 1, 1, 2, 1, 2, 1),  # the reference's small_image_model
}
SMALL_IMAGE_MIN, SMALL_IMAGE_MAX = 24, 64  # "auto": the small plan in this range


@dataclasses.dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int
    dropout: float


# Compound scaling table; L2 is the Noisy Student paper's wider, deeper model.
VARIANTS = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 300, 0.3),
    "b4": Variant(1.4, 1.8, 380, 0.4),
    "b5": Variant(1.6, 2.2, 456, 0.4),
    "b6": Variant(1.8, 2.6, 528, 0.5),
    "b7": Variant(2.0, 3.1, 600, 0.5),
    "l2": Variant(4.3, 5.3, 800, 0.5),
    # Not an EfficientNet: the plain small-image CNN a user would train instead
    # (models/plain_cnn.py), the baseline every claim is measured against.
    "cnn": Variant(1.0, 1.0, 32, 0.0),
}
PLAIN_CNN = "cnn"

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; saved next to every model."""

    variant: str = "b0"
    num_classes: int = 1000
    channels: int = 3
    image_size: int = 0  # 0: the variant's resolution
    width_scale: float = 1.0  # multiplies the variant's width coefficient
    depth_scale: float = 1.0  # multiplies the variant's depth coefficient
    stem_stride: int = 2  # 1 keeps detail on 28-32 px images
    # "auto" (resolved when the config is made, so a saved config rebuilds the same
    # network at any resolution): "small" from SMALL_IMAGE_MIN to SMALL_IMAGE_MAX px,
    # else "imagenet"
    stage_strides: str = "auto"
    dropout: float = -1.0  # <0: the variant's rate
    stochastic_depth: float = 0.2  # drop rate of the last block
    # Input normalisation (x - mean) / std per channel, in pixel units; empty: 127.5,
    # i.e. [-1, 1]. Pretrained weights bring their own (see models/pretrained.py).
    input_mean: tuple = ()
    input_std: tuple = ()
    # Dense + batch norm (+ ReLU) layers between pooling and the classifier: the first
    # layers of a SimCLR projection head, kept when fine-tuning from a middle layer of
    # it (SimCLRv2). Empty: the plain EfficientNet.
    head_units: tuple = ()
    head_linear_last: bool = False  # the last kept head layer has no ReLU

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise InputError(
                f"Unknown EfficientNet variant {self.variant!r}; "
                f"choose one of {', '.join(VARIANTS)}.")
        if self.num_classes < 2:
            raise InputError(f"num_classes must be >= 2, got {self.num_classes}.")
        if self.stage_strides == "auto":
            object.__setattr__(self, "stage_strides", "small" if (
                SMALL_IMAGE_MIN <= self.resolved_image_size <= SMALL_IMAGE_MAX)
                else "imagenet")
        if self.stage_strides not in STAGE_STRIDES:
            raise InputError(f"stage_strides must be auto or one of "
                             f"{', '.join(STAGE_STRIDES)}, got {self.stage_strides!r}.")
        if self.stem_stride not in (1, 2):
            raise InputError(f"stem_stride must be 1 or 2, got {self.stem_stride}.")
        # a width or depth scale of 0 would build no channels or blocks
        ranges.check_fields(self, "dropout", "stochastic_depth", "width_scale",
                            "depth_scale", "image_size")

    @property
    def resolved_image_size(self):
        return self.image_size or VARIANTS[self.variant].resolution

    @property
    def resolved_dropout(self):
        return VARIANTS[self.variant].dropout if self.dropout < 0 else self.dropout

    @property
    def width(self):
        return VARIANTS[self.variant].width * self.width_scale

    @property
    def depth(self):
        return VARIANTS[self.variant].depth * self.depth_scale

    @property
    def input_scale_offset(self):
        """The Rescaling layer's per-channel (scale, offset): x * scale + offset."""
        mean = list(self.input_mean) or [127.5]
        std = list(self.input_std) or [127.5]
        scale = [1.0 / s for s in std]
        offset = [-m / s for m, s in zip(mean, std)] if len(mean) == len(std) else None
        if offset is None:
            raise InputError("input_mean and input_std need the same length.")
        return ((scale[0], offset[0]) if len(scale) == 1 else (scale, offset))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        d = dataclasses.asdict(self)
        for key in ("input_mean", "input_std", "head_units"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        for key in ("input_mean", "input_std", "head_units"):
            d[key] = tuple(d.get(key, ()))
        d.setdefault("stage_strides", "imagenet")  # runs saved before the plans existed
        return cls(**d)


def round_filters(filters, width, divisor=8):
    """Scales channels by `width`, rounded to a multiple of `divisor`."""
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats, depth):
    return int(math.ceil(depth * repeats))


def _conv(filters, kernel_size=1, strides=1, name=None):
    return layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
        name=name)


def _bn(name, center=True):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                     center=center, name=name)


def mbconv_block(x, args, drop_rate, name):
    """Inverted residual block with squeeze-excitation; residual when shapes match."""
    inputs = x
    filters = args.filters_in * args.expand_ratio
    if args.expand_ratio != 1:
        x = _conv(filters, name=name + "expand_conv")(x)
        x = _bn(name + "expand_bn")(x)
        x = layers.Activation("swish", name=name + "expand_activation")(x)
    x = layers.DepthwiseConv2D(
        args.kernel_size, strides=args.strides, padding="same", use_bias=False,
        depthwise_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
        name=name + "dwconv")(x)
    x = _bn(name + "bn")(x)
    x = layers.Activation("swish", name=name + "activation")(x)
    if args.se_ratio:
        squeezed = max(1, int(args.filters_in * args.se_ratio))
        se = layers.GlobalAveragePooling2D(keepdims=True, name=name + "se_squeeze")(x)
        se = layers.Conv2D(squeezed, 1, activation="swish", name=name + "se_reduce")(se)
        se = layers.Conv2D(filters, 1, activation="sigmoid", name=name + "se_expand")(se)
        x = layers.Multiply(name=name + "se_excite")([x, se])
    x = _conv(args.filters_out, name=name + "project_conv")(x)
    x = _bn(name + "project_bn")(x)
    if args.strides == 1 and args.filters_in == args.filters_out:
        if drop_rate > 0:
            x = stochastic_depth(drop_rate, name=name + "drop_path")(x)
        x = layers.Add(name=name + "add")([x, inputs])
    return x


def stage_plan(config):
    """Per-block arguments after width/depth scaling, named like Keras' blocks."""
    plan = []
    if config.variant == PLAIN_CNN:
        return plan
    strides = STAGE_STRIDES[config.stage_strides]
    for stage, base in enumerate(B0_STAGES, start=1):
        args = dataclasses.replace(
            base, strides=strides[stage - 1],
            filters_in=round_filters(base.filters_in, config.width),
            filters_out=round_filters(base.filters_out, config.width),
            repeats=round_repeats(base.repeats, config.depth))
        for i in range(args.repeats):
            block = args if i == 0 else dataclasses.replace(
                args, filters_in=args.filters_out, strides=1)
            plan.append((f"block{stage}{chr(ord('a') + i)}_", block))
    return plan


def feature_map_sizes(config, image_size=None):
    """[(layer, side of its output map)] for the stem and each stage's last block at
    `image_size` (default: the config's): what the head pools, seen before training.
    'same' padding rounds each stride-2 layer's side up."""
    side = image_size or config.resolved_image_size
    if config.variant == PLAIN_CNN:
        from nstudent.models.plain_cnn import map_sizes

        return map_sizes(side)
    side = -(-side // config.stem_stride)
    sizes = [("stem", side)]
    plan = stage_plan(config)
    for index, (name, args) in enumerate(plan):
        side = -(-side // args.strides)
        if index + 1 == len(plan) or plan[index + 1][0][:6] != name[:6]:
            sizes.append((name.rstrip("_")[:-1], side))  # "block2b_" -> "block2"
    return sizes


def describe_feature_maps(config, image_size=None):
    """One line: the map side after the stem and each stage, e.g. for the log."""
    return ", ".join(f"{name} {side}x{side}" for name, side in
                     feature_map_sizes(config, image_size))


def residual_blocks(config):
    """The blocks with a residual connection: the only ones stochastic depth drops."""
    return [name.rstrip("_") for name, args in stage_plan(config)
            if args.strides == 1 and args.filters_in == args.filters_out]


def head_layer(x, units, index, relu=True):
    """Layer `index` (from 1) of a projection head: Dense without bias, batch norm and
    (except SimCLR's last layer) ReLU. The last layer's batch norm has no offset, as
    the reference's (its output is the projection, L2-normalised next). The
    pretraining network and a classifier fine-tuned from it name them alike, so
    weights move by name."""
    x = layers.Dense(units, use_bias=False, name=f"head_dense_{index}",
                     kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(x)
    x = _bn(f"head_bn_{index}", center=relu)(x)
    return layers.ReLU(name=f"head_relu_{index}")(x) if relu else x


def feature_width(config):
    """Channels of the pooled features (the encoder's output)."""
    if config.variant == PLAIN_CNN:
        from nstudent.models.plain_cnn import feature_width as cnn_width

        return cnn_width(config.width)
    return round_filters(HEAD_FILTERS, config.width)


def build_encoder(config):
    """(images input, pooled features): the network up to global pooling."""
    inputs = keras.Input((None, None, config.channels), name="images")
    scale, offset = config.input_scale_offset
    x = layers.Rescaling(scale, offset=offset, name="rescale")(inputs)
    if config.variant == PLAIN_CNN:
        from nstudent.models.plain_cnn import features

        return inputs, features(x, config.width)
    x = _conv(round_filters(STEM_FILTERS, config.width), 3, config.stem_stride,
              name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = layers.Activation("swish", name="stem_activation")(x)

    plan = stage_plan(config)
    last = max(len(plan) - 1, 1)
    for index, (name, args) in enumerate(plan):
        # Drop rate rises linearly with depth and reaches the flag at the last block.
        x = mbconv_block(x, args, config.stochastic_depth * index / last, name)

    x = _conv(feature_width(config), name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = layers.Activation("swish", name="top_activation")(x)
    return inputs, layers.GlobalAveragePooling2D(name="avg_pool")(x)


def build_efficientnet(config):
    """Builds the classifier described by a `ModelConfig`."""
    inputs, x = build_encoder(config)
    for index, units in enumerate(config.head_units, start=1):
        last = index == len(config.head_units)
        x = head_layer(x, units, index, relu=not (last and config.head_linear_last))
    if config.resolved_dropout > 0:
        x = layers.Dropout(config.resolved_dropout, name="top_dropout")(x)
    outputs = layers.Dense(
        config.num_classes, dtype="float32", name="logits",
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform"),
    )(x)
    name = "plain_cnn" if config.variant == PLAIN_CNN else f"efficientnet_{config.variant}"
    return keras.Model(inputs, outputs, name=name)


def block_names(model):
    """The model's MBConv block prefixes in depth order (for freezing, issue 4)."""
    seen = []
    for layer in model.layers:
        if layer.name.startswith("block"):
            prefix = layer.name.split("_")[0]
            if prefix not in seen:
                seen.append(prefix)
    return seen
