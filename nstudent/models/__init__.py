"""EfficientNet family with dropout and stochastic depth, the plain CNN baseline, and
SimCLRv2's projection head."""

from nstudent.models.efficientnet import (  # noqa: F401
    STAGE_STRIDES, VARIANTS, ModelConfig, block_names, build_efficientnet, build_encoder,
    describe_feature_maps, feature_map_sizes, feature_width, head_layer, residual_blocks,
    round_filters, stage_plan)
from nstudent.models.layers import stochastic_depth  # noqa: F401
from nstudent.models.pretrained import (  # noqa: F401
    PretrainedWeights, build_with_weights, load_pretrained)
from nstudent.models.inference import inference_network  # noqa: F401
from nstudent.models.projection_head import HeadConfig, build_pretrain_network  # noqa: F401
