"""The MoE layers of a model, and forward hooks that read or restrict their routers.

Restricting a router (its dropped experts' gate logits set to -inf) routes exactly as the sliced
subset model would: the softmax over the remaining routed experts is the subset's softmax. Layerwise
selection uses this to "prune" a layer before measuring the next one without copying any weights.

Legend: T tokens, E all experts of a layer (routed first, shared last).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from emomoe.errors import DataError


@dataclasses.dataclass(frozen=True)
class MoELayer:
    index: int
    """Position of the block in `model.layers`."""
    moe: nn.Module
    num_routed: int
    num_shared: int

    @property
    def gate(self) -> nn.Linear:
        return self.moe.router.gate

    @property
    def num_experts(self) -> int:
        return self.num_routed + self.num_shared


def moe_layers(model: nn.Module, where: str = "model") -> list[MoELayer]:
    """Every block of `model` that routes tokens to experts, in order; an error if there is none."""
    layers = []
    for index, block in enumerate(model.layers):
        router = block.moe.router
        if router is None:  # a dense layer: shared experts only
            continue
        num_experts = block.moe.experts.w1.shape[0]
        layers.append(MoELayer(index, block.moe, router.num_routed, num_experts - router.num_routed))
    if not layers:
        raise DataError(f"{where}: has no MoE layers (no routers), so there are no experts to select")
    return layers


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the layer of interest has been seen."""


def run_until_stopped(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    try:
        model(batch["input_ids_BS"], doc_ids_BS=batch.get("doc_ids_BS"))
    except StopForward:
        pass


@contextlib.contextmanager
def restrict_routing(layers: list[MoELayer], kept_routed: dict[int, list[int]]) -> Iterator[None]:
    """Within the block, layer i of `layers` routes only to the routed experts `kept_routed[i]`
    (plus its shared experts)."""
    handles = []
    for i, kept in kept_routed.items():
        layer = layers[i]
        mask_E = torch.full((layer.num_experts,), float("-inf"))
        mask_E[torch.as_tensor(kept, dtype=torch.long)] = 0.0
        mask_E[layer.num_routed :] = 0.0
        handles.append(layer.gate.register_forward_hook(_add_mask(mask_E)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _add_mask(mask_E: torch.Tensor):
    def hook(module: nn.Module, args, logits: torch.Tensor) -> torch.Tensor:
        return logits + mask_E.to(logits.dtype)

    return hook


@contextlib.contextmanager
def capture_routed_logits(layer: MoELayer, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collect the layer's routed gate logits (T, E_routed) of every forward inside the block;
    with `stop`, end each forward right there (later layers are not needed)."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args, logits: torch.Tensor) -> None:
        captured.append(logits.detach().reshape(-1, logits.shape[-1])[:, : layer.num_routed].float())
        if stop:
            raise StopForward

    handle = layer.gate.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
