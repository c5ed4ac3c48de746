"""Linear maps of float32 activations by weights kept in their stored dtype (bf16, fp16) or as
integers (`emomoe.model.quantized`).

A model too big for RAM in fp32 keeps its weights as stored and computes in fp32. Each weight is
read once per forward, as stored, and widened only where it is used:

- decoding (few rows per weight: `DECODE_ROWS`): on the CPU, bf16 and integer weights go to fused
  kernels (`bf16_grouped_linear`, `int_grouped_linear`) that widen each weight vector in registers
  (integers times their group's scale); of stacked experts they read only the experts that have rows.
- otherwise (a prompt, evaluation, other dtypes or devices, no compiler): a tile of weight rows at
  a time (`TILE_BYTES`) is widened (dequantized) and multiplied by a GEMM, which all rows share.
  This is also the kernels' PyTorch twin.

Weights as wide as the activations (or under autocast) take the plain ops, untouched.

Legend: N rows (of activations), D model dim (a linear map's inputs, as in `expert_matmul`),
F ffn hidden (its outputs), E experts, X leading dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emomoe import kernels
from emomoe.model.quantized import QuantizedTensor, QuantizedWeight

Weight = torch.Tensor | QuantizedTensor | QuantizedWeight
"""What a module may hold as a weight: a float tensor (any float dtype) or integers with scales."""

DECODE_ROWS = 16
"""Rows per weight matrix up to which the kernel runs; past that a GEMM over a widened tile wins."""
TILE_BYTES = 2 * 2**20
"""Widened weight bytes per tile: about a core's L2, so the GEMM reads the tile while it is hot."""


def is_stored_narrower(x: torch.Tensor, weight: Weight) -> bool:
    """`weight` is kept narrower than the activations it multiplies (outside autocast, which casts),
    or as integers."""
    if isinstance(weight, (QuantizedTensor, QuantizedWeight)):
        return True
    if weight.dtype == x.dtype:  # first, and alone: every fp32 linear asks
        return False
    return (
        weight.dtype.itemsize < x.dtype.itemsize
        and weight.is_floating_point()
        and not torch.is_autocast_enabled(x.device.type)
    )


def _tensor(w: Weight) -> torch.Tensor | QuantizedTensor:
    return w.tensor() if isinstance(w, QuantizedWeight) else w


def linear(x_XD: torch.Tensor, w_FD: Weight) -> torch.Tensor:
    """`x @ w.T`, [..., F], in the activations' dtype, however `w_FD` is stored."""
    w_FD = _tensor(w_FD)
    if not is_stored_narrower(x_XD, w_FD):
        return F.linear(x_XD, w_FD)
    x_ND = x_XD.reshape(-1, x_XD.shape[-1])
    if _kernel_applies(x_ND, w_FD, experts=1):
        y_NF = _kernel(x_ND, w_FD, None)
    else:
        y_NF = _tiled_grouped_linear(x_ND, w_FD[None], torch.tensor([x_ND.shape[0]]))
    return y_NF.view(*x_XD.shape[:-1], -1)


def grouped_linear(x_ND: torch.Tensor, w_EFD: Weight, counts_E: torch.Tensor) -> torch.Tensor:
    """Rows of `x_ND` sorted by expert, `counts_E` rows each (on the host): row n -> x_n @ w[e(n)].T,
    [N, F] in x's dtype, `w_EFD` read as stored and only for experts that have rows."""
    w_EFD = _tensor(w_EFD)
    if _kernel_applies(x_ND, w_EFD, experts=w_EFD.shape[0]):
        return _kernel(x_ND, w_EFD, counts_E)
    return _tiled_grouped_linear(x_ND, w_EFD, counts_E)


def _kernel_applies(x_ND: torch.Tensor, w: torch.Tensor | QuantizedTensor, experts: int) -> bool:
    return (
        (isinstance(w, QuantizedTensor) or w.dtype == torch.bfloat16)
        and w.is_contiguous()
        and x_ND.shape[0] <= DECODE_ROWS * experts
        and kernels.usable(x_ND)
        and w.device.type == "cpu"
    )


def _kernel(x_ND: torch.Tensor, w: torch.Tensor | QuantizedTensor, counts_E: torch.Tensor | None) -> torch.Tensor:
    """The fused kernel for `w` [E, F, D] and its counts, or for one matrix `w` [F, D] and no counts
    (a plain linear map: no count tensor and no 3-D view made per call, ~160 calls a token)."""
    if isinstance(w, QuantizedTensor):
        return kernels.ops().int_grouped_linear(x_ND, w.qdata, w.scales, counts_E, w.bits)
    return kernels.ops().bf16_grouped_linear(x_ND, w, counts_E)


def _tiled_grouped_linear(x_ND: torch.Tensor, w_EFD: torch.Tensor | QuantizedTensor, counts_E: torch.Tensor) -> torch.Tensor:
    out_NF = x_ND.new_empty(x_ND.shape[0], w_EFD.shape[1])
    rows = max(1, TILE_BYTES // (w_EFD.shape[2] * x_ND.element_size()))
    # One tile buffer for the call: a new 2 MB tensor per tile is mmapped and faulted in afresh
    # (glibc), which made widening 5x slower than the copy itself.
    tile_FD = x_ND.new_empty(min(rows, w_EFD.shape[1]), w_EFD.shape[2])
    start = 0
    for e, count in enumerate(counts_E.tolist()):
        block_ND = x_ND[start : start + count]
        for f in range(0, w_EFD.shape[1] if count else 0, rows):
            stored_FD = w_EFD[e, f : f + rows]
            widened_FD = _widen(stored_FD, tile_FD[: stored_FD.shape[0]])
            out_NF[start : start + count, f : f + rows] = block_ND @ widened_FD.T
        start += count
    return out_NF


def _widen(stored_FD: torch.Tensor | QuantizedTensor, out_FD: torch.Tensor) -> torch.Tensor:
    """`stored_FD` in `out_FD`'s dtype, written into it."""
    if not isinstance(stored_FD, QuantizedTensor):
        return out_FD.copy_(stored_FD)
    groups = stored_FD.integers().view(*stored_FD.scales.shape, -1)  # [F, groups, group size]
    torch.mul(groups, stored_FD.scales[..., None], out=out_FD.view_as(groups))
    return out_FD


class Linear(nn.Linear):
    """A bias-free `nn.Linear` (same weight, same state dict) whose weight may stay narrower than
    its input."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)
