"""Physically slicing a model down to a subset of its routed experts.

The subset keeps, in every MoE layer, the chosen routed experts (renumbered 0..n-1 in their
original order) and then the shared experts, last as always; gate rows and every other per-expert
tensor of the layer are cut the same way. Its config records the per-layer expert totals, so it
loads on its own at its own size. Routing is a softmax over the kept experts' logits only: the
paper's implicit renormalisation over the subset. No document pool is used in a subset.
"""

from __future__ import annotations

import torch
from torch import nn

from emomoe.model import ModelConfig, build_model
from emomoe.select.routing import MoELayer


def subset_config(cfg: ModelConfig, layers: list[MoELayer], kept_routed: list[list[int]]) -> ModelConfig:
    """`cfg` with the per-layer expert totals of the subset and routing without a pool."""
    totals = [cfg.moe.experts_in_layer(i) for i in range(cfg.num_layers)]
    for layer, kept in zip(layers, kept_routed):
        totals[layer.index] = len(kept) + layer.num_shared
    data = cfg.to_dict()
    moe = data["moe"]
    moe["num_experts_per_layer"] = totals
    moe["num_experts"] = max(totals)
    # The router clamps top-k per layer to the routed experts present; this only keeps the
    # config valid when every layer holds fewer routed experts than top_k.
    moe["top_k"] = min(cfg.moe.top_k, max(len(kept) for kept in kept_routed))
    moe["router"]["pool"] = "off"
    moe["router"]["eval_pool"] = "off"
    return ModelConfig.from_dict(data)


def kept_expert_ids(layer: MoELayer, kept_routed: list[int]) -> list[int]:
    """All expert ids a sliced layer keeps, in their new order: routed ones, then the shared."""
    return [*kept_routed, *range(layer.num_routed, layer.num_experts)]


def slice_model(
    model: nn.Module, cfg: ModelConfig, layers: list[MoELayer], kept_routed: list[list[int]]
) -> tuple[nn.Module, ModelConfig]:
    """A new, smaller model holding only the kept experts of each MoE layer (weights copied)."""
    sub_cfg = subset_config(cfg, layers, kept_routed)
    # Every weight is overwritten below, so skip the (slow) random initialisation: build on the
    # meta device and allocate storage afterwards.
    with torch.device("meta"):
        sub = build_model(sub_cfg)
    sub = sub.to_empty(device=next(model.parameters()).device)
    per_prefix = {f"layers.{layer.index}.moe.": (layer, kept) for layer, kept in zip(layers, kept_routed)}
    # Non-persistent buffers too: tables derived from the config (rotary embeddings) are the
    # source's, and per-expert running statistics are sliced like the weights.
    source = {**dict(model.named_buffers()), **model.state_dict()}
    with torch.no_grad():
        for key, dest in {**dict(sub.named_buffers()), **sub.state_dict()}.items():
            tensor = source[key]
            prefix = key[: key.index(".moe.") + len(".moe.")] if ".moe." in key else None
            if prefix in per_prefix:
                tensor = _slice_experts(tensor, *per_prefix[prefix], key)
            dest.copy_(tensor)
    return sub.train(model.training), sub_cfg


def _slice_experts(tensor: torch.Tensor, layer: MoELayer, kept: list[int], key: str) -> torch.Tensor:
    # Every tensor of an MoE layer is indexed by expert along dim 0: all experts (gate rows,
    # expert weights) or only the routed ones (router statistics such as a selection bias).
    if tensor.shape[0] == layer.num_experts:
        ids = kept_expert_ids(layer, kept)
    elif tensor.shape[0] == layer.num_routed:
        ids = kept
    else:
        raise ValueError(f"{key}: dim 0 is {tensor.shape[0]}, neither the layer's experts nor its routed experts")
    return tensor.index_select(0, torch.as_tensor(ids, dtype=torch.long))
