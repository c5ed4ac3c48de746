"""Weight initialisation shared by every module: OLMo-core's truncated normal."""

import torch
from torch import nn

DEFAULT_STD = 0.02


@torch.no_grad()
def init_weight_(weight: torch.Tensor, std: float = DEFAULT_STD) -> torch.Tensor:
    """Normal with standard deviation `std`, truncated at +-3 std."""
    return nn.init.trunc_normal_(weight, std=std, a=-3 * std, b=3 * std)
