"""Models and single blocks around given weights.

Both builders construct on the meta device (nothing allocated, no random initialisation) and
adopt the given tensors as they are, then compute the buffers checkpoints do not store:

- `model_from_weights`: a whole model (how checkpoints load). Weights stored narrower than fp32
  (a bf16 model too big for RAM in fp32) stay so: the model computes in fp32 all the same, each
  matrix read in its stored dtype where it is used (`emomoe.model.linear`); so do integer weights
  (`emomoe.model.quantized`).
- `block_from_weights`: one `Block`, its weights upcast to fp32. Streaming selection runs
  calibration tokens through such a block and drops it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from emomoe.model.config import ModelConfig
from emomoe.model.quantized import QuantizedTensor, install_quantized
from emomoe.model.transformer import Block, EmoTransformer, build_model

COMPUTE_DTYPE = torch.float32


def model_from_weights(cfg: ModelConfig, weights: Mapping[str, torch.Tensor | QuantizedTensor]) -> EmoTransformer:
    """The model `cfg` describes, holding `weights` (its full state dict) as they are: a
    `QuantizedTensor` becomes a `QuantizedWeight` in place of its parameter."""
    with torch.device("meta"):
        model = build_model(cfg)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if isinstance(tensor, QuantizedTensor):
            install_quantized(model, name, tensor)
            state |= tensor.state(name)
        else:
            state[name] = tensor
    model.load_state_dict(state, assign=True)
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
