"""The EMO / standard MoE transformer: config, model, router and losses."""

from emomoe.model.config import LBScope, LossConfig, ModelConfig, MoEConfig, RouterConfig
from emomoe.model.transformer import EmoTransformer, LayerRouting, ModelOutput, build_model

__all__ = [
    "EmoTransformer",
    "LBScope",
    "LayerRouting",
    "LossConfig",
    "ModelConfig",
    "ModelOutput",
    "MoEConfig",
    "RouterConfig",
    "build_model",
]
