"""The network SimCLRv2 pretrains: the EfficientNet encoder and a projection head.

Outputs a dict: `embeddings` (the pooled encoder features, the representation
kNN and linear evaluation read) and `projections` (the head's output, what the
contrastive loss sees). The head's layers are named as `models.head_layer`
names them, so a classifier keeping its first K layers takes their weights by
name (`finetune_start`).
"""

import dataclasses

import keras

from nstudent import ranges
from nstudent.models.efficientnet import build_encoder, feature_width, head_layer


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    layers: int = 3  # SimCLRv2: 3 (SimCLR: 2)
    dim: int = 128  # width of the last layer, the projection

    def __post_init__(self):
        ranges.check_fields(self, proj_head_layers="layers", proj_dim="dim")

    def units(self, model_config):
        """Widths of the head's layers: the encoder's width, the last `dim`."""
        width = feature_width(model_config)
        return (width,) * (self.layers - 1) + (self.dim,)


def build_pretrain_network(model_config, head):
    """Encoder + projection head (Dense + BN + ReLU at the encoder's width; the last
    Dense to `head.dim` + BN, no ReLU)."""
    inputs, features = build_encoder(model_config)
    x = features
    units = head.units(model_config)
    for index, width in enumerate(units, start=1):
        x = head_layer(x, width, index, relu=index < len(units))
    return keras.Model(inputs, {"embeddings": features, "projections": x},
                       name=f"simclr_efficientnet_{model_config.variant}")
