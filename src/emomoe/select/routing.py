"""The MoE layers of a model (from its config), and a forward hook that reads a router's logits.

Legend: T tokens, E all experts of a layer (routed first, shared last).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from emomoe.errors import DataError
from emomoe.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class MoELayer:
    index: int
    """Position of the block in `model.layers`."""
    num_routed: int
    num_shared: int

    @property
    def num_experts(self) -> int:
        return self.num_routed + self.num_shared

    @property
    def prefix(self) -> str:
        """Start of the names of the layer's MoE tensors (router and experts)."""
        return f"layers.{self.index}.moe."


def moe_layers(cfg: ModelConfig, where: str = "model") -> list[MoELayer]:
    """Every block that routes tokens to experts, in order; an error if there is none."""
    shared = cfg.moe.router.num_shared_experts
    layers = [
        MoELayer(i, cfg.moe.routed_in_layer(i), shared)
        for i in range(cfg.num_layers)
        if cfg.moe.routed_in_layer(i) > 0  # a layer of shared experts only is dense: no router
    ]
    if not layers:
        raise DataError(f"{where}: has no MoE layers (no routers), so there are no experts to select")
    return layers


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the layer of interest has been seen."""


@contextlib.contextmanager
def capture_routed_logits(gate: nn.Linear, num_routed: int, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the gate's routed logits (T, E_routed) of every forward inside the block; with
    `stop`, end each forward right there (raising `StopForward`)."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args, logits: torch.Tensor) -> None:
        captured.append(logits.detach().reshape(-1, logits.shape[-1])[:, :num_routed].float())
        if stop:
            raise StopForward

    handle = gate.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
