"""Which rows of which tensors a subset keeps, and reading them out of a weight source.

The subset keeps, in every MoE layer, the chosen routed experts (renumbered 0..n-1 in their
original order) and then the shared experts, last as always; gate rows and every other per-expert
tensor of the layer are cut the same way. Everything else (attention, norms, embeddings, LM head)
is kept whole. Its config records the per-layer expert totals, so it loads on its own at its own
size. Routing is a softmax over the kept experts' logits only: the paper's implicit
renormalisation over the subset. No document pool is used in a subset.

Tensors are read in their stored dtype and never converted: a subset's weights are bit-identical
to the source's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from emomoe.model import ModelConfig
from emomoe.model.from_weights import model_from_weights
from emomoe.select.routing import MoELayer
from emomoe.select.weight_source import ModelWeights, WeightSource

AddTensor = Callable[[str, torch.Tensor], None]


def subset_config(cfg: ModelConfig, layers: list[MoELayer], num_keep: list[int]) -> ModelConfig:
    """`cfg` with the per-layer expert totals of a subset keeping `num_keep` routed experts per MoE
    layer, and routing without a pool."""
    totals = [cfg.moe.experts_in_layer(i) for i in range(cfg.num_layers)]
    for layer, n in zip(layers, num_keep):
        totals[layer.index] = n + layer.num_shared
    data = cfg.to_dict()
    moe = data["moe"]
    moe["num_experts_per_layer"] = totals
    moe["num_experts"] = max(totals)
    # The router clamps top-k per layer to the routed experts present; this only keeps the
    # config valid when every layer holds fewer routed experts than top_k.
    moe["top_k"] = min(cfg.moe.top_k, max(num_keep))
    moe["router"]["pool"] = "off"
    moe["router"]["eval_pool"] = "off"
    return ModelConfig.from_dict(data)


def kept_expert_ids(layer: MoELayer, kept_routed: Sequence[int]) -> list[int]:
    """All expert ids a sliced layer keeps, in their new order: routed ones, then the shared."""
    return [*kept_routed, *range(layer.num_routed, layer.num_experts)]


def kept_rows(layer: MoELayer, kept_routed: Sequence[int], name: str, shape: tuple[int, ...]) -> list[int] | None:
    """Rows of tensor `name` that the subset keeps: None (all of it) unless it is a per-expert
    tensor of `layer`."""
    if not name.startswith(layer.prefix):
        return None
    # Every tensor of an MoE layer is indexed by expert along dim 0: all experts (gate rows,
    # expert weights) or only the routed ones (router statistics such as a selection bias).
    if shape[0] == layer.num_experts:
        return kept_expert_ids(layer, kept_routed)
    if shape[0] == layer.num_routed:
        return list(kept_routed)
    raise ValueError(f"{name}: dim 0 is {shape[0]}, neither the layer's experts nor its routed experts")


def block_names(source: WeightSource, index: int) -> list[str]:
    return [name for name in source.names() if name.startswith(f"layers.{index}.")]


def other_names(source: WeightSource) -> list[str]:
    """Tensors outside the blocks: embeddings, final norm, LM head."""
    return [name for name in source.names() if not name.startswith("layers.")]


def block_subset(
    source: WeightSource, index: int, layer: MoELayer | None, kept_routed: Sequence[int] | None
) -> dict[str, torch.Tensor]:
    """Block `index`'s subset tensors (full names, stored dtype); a dense block (`layer` None) whole."""
    tensors = {}
    for name in block_names(source, index):
        rows = kept_rows(layer, kept_routed, name, source.shape(name)) if layer is not None else None
        tensors[name] = _copy(source, name, rows)
    return tensors


def _copy(source: WeightSource, name: str, rows: list[int] | None = None) -> torch.Tensor:
    # A tensor read whole may be a view of the source (a model's parameter, a memory-mapped file
    # that stays mapped while the view lives): the subset gets a copy of its own.
    tensor = source.get(name, rows=rows)
    return tensor if rows is not None else tensor.clone()


def read_blocks(
    source: WeightSource, layers: list[MoELayer], kept_routed: list[list[int]]
) -> Iterator[dict[str, torch.Tensor]]:
    """Every block's subset tensors in order, each read when the previous one is done with."""
    by_index = {layer.index: (layer, kept) for layer, kept in zip(layers, kept_routed)}
    for index in range(source.config.num_layers):
        tensors = block_subset(source, index, *by_index.get(index, (None, None)))
        source.close()  # the block holds copies: unmap the pages read
        yield tensors


def extract_subset(source: WeightSource, blocks: Iterable[dict[str, torch.Tensor]], add: AddTensor) -> None:
    """Hand every tensor of the subset to `add`: the `blocks` one at a time (`read_blocks`, or the
    blocks a streaming selection ran), then the embeddings, final norm and LM head."""
    for tensors in blocks:
        for name, tensor in tensors.items():
            add(name, tensor)
    for name in other_names(source):
        add(name, _copy(source, name))
        source.close()


def subset_model(state: dict[str, torch.Tensor], sub_cfg: ModelConfig) -> nn.Module:
    """An in-memory subset model holding `state` (the tensors `extract_subset` handed out)."""
    return model_from_weights(sub_cfg, state).eval()


def slice_model(
    model: nn.Module, cfg: ModelConfig, layers: list[MoELayer], kept_routed: list[list[int]]
) -> tuple[nn.Module, ModelConfig]:
    """A new, smaller model holding copies of only the kept experts of each MoE layer."""
    state: dict[str, torch.Tensor] = {}
    source = ModelWeights(model, cfg)
    extract_subset(source, read_blocks(source, layers, kept_routed), state.__setitem__)
    sub_cfg = subset_config(cfg, layers, [len(kept) for kept in kept_routed])
    return subset_model(state, sub_cfg).train(model.training), sub_cfg
