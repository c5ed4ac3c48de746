"""Models and single blocks around given weights, and fp32 compute for weights stored narrower.

Both builders construct on the meta device (nothing allocated, no random initialisation) and
adopt the given tensors as they are, then compute the buffers checkpoints do not store:

- `model_from_weights`: a whole model (how checkpoints load).
- `block_from_weights`: one `Block`, its weights upcast to fp32. Streaming selection runs
  calibration tokens through such a block and drops it.

This CPU has no bf16 matmul, and a big model does not fit in RAM in fp32, so weights can stay in
their stored dtype with only the module being run held in fp32:

- `fp32_compute(model)` makes a whole model whose weights are stored in bf16 (say) compute in
  fp32: each block, the final norm and the LM head get an fp32 copy of their weights for their
  own forward only, and the embedding upcasts the rows it looks up. Peak extra memory is the
  largest single module in fp32, not the model.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from emomoe.model.config import ModelConfig
from emomoe.model.transformer import Block, EmoTransformer, build_model

COMPUTE_DTYPE = torch.float32


def model_from_weights(cfg: ModelConfig, weights: Mapping[str, torch.Tensor]) -> EmoTransformer:
    """The model `cfg` describes, holding `weights` (its full state dict) as they are."""
    with torch.device("meta"):
        model = build_model(cfg)
    model.load_state_dict(weights, assign=True)
    model.init_buffers()
    return model


def block_from_weights(cfg: ModelConfig, layer: int, weights: Mapping[str, torch.Tensor]) -> Block:
    """Block `layer` of a model with config `cfg`, in eval mode, holding `weights` (names relative
    to the block, e.g. `attn.q_proj.weight`) upcast to fp32; fp32 tensors are used as they are.

    Every persistent tensor of the block must be given. A tensor on the meta device stays
    unallocated: fine for parts the caller never runs (a forward stopped early).
    """
    with torch.device("meta"):
        block = Block(cfg, layer)
    block.load_state_dict({name: t.to(COMPUTE_DTYPE) for name, t in weights.items()}, assign=True)
    if block.moe.router is not None:
        block.moe.router.init_buffers()
    return block.eval()


@contextlib.contextmanager
def fp32_compute(model: EmoTransformer) -> Iterator[EmoTransformer]:
    """Within the block, `model` computes in fp32 whatever floating dtype its weights are stored
    in, upcasting one module at a time (see the module docstring). A no-op for fp32 weights."""
    handles = compute_in_fp32(model)
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def compute_in_fp32(model: EmoTransformer) -> list[RemovableHandle]:
    """`fp32_compute` for good: the hooks stay until the returned handles are removed (a model
    loaded for inference only)."""
    handles = [model.embed.register_forward_hook(_output_to_compute_dtype)]
    for module in (*model.layers, model.norm, model.lm_head):
        if any(_needs_upcast(t) for t in _tensors(module)):
            stash: dict[nn.Parameter | torch.Tensor, torch.Tensor] = {}
            handles.append(module.register_forward_pre_hook(_upcaster(stash)))
            handles.append(module.register_forward_hook(_restorer(stash), always_call=True))
    return handles


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    return itertools.chain(module.parameters(), module.buffers())


def _needs_upcast(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dtype != COMPUTE_DTYPE


def _output_to_compute_dtype(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    # Looking rows up in the stored dtype and upcasting them is exact, and avoids an fp32 copy of
    # the whole (vocab x d_model) table.
    return output.to(COMPUTE_DTYPE)


def _upcaster(stash: dict):
    def hook(module: nn.Module, args) -> None:
        for t in _tensors(module):
            if _needs_upcast(t):
                stash[t] = t.data
                t.data = t.data.to(COMPUTE_DTYPE)

    return hook


def _restorer(stash: dict):
    def hook(module: nn.Module, args, output) -> None:
        for t, stored in stash.items():
            t.data = stored
        stash.clear()

    return hook
