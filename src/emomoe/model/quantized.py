"""Weight-only integer quantization: weights stored as 8- or 4-bit integers with a float scale per
group of inputs, used as they are by `emomoe.model.linear` (activations stay float32).

A weight [..., F, D] (F outputs, D inputs) is split along D into groups of G; each group keeps one
float32 scale, and w = scale * q. The quantization is symmetric (no zero point), like llama.cpp's
q8_0 and q4_0:

- 8 bits: q = round(w / s) in [-127, 127] with s = max|w| / 127; `qdata` is int8 [..., F, D].
- 4 bits: the group's largest-magnitude value m maps to -8 (s = -m / 8), so all 16 levels are used
  and q is in [-8, 7]; q + 8 is stored as a nibble, two per byte, in blocks of 32 weights:
  byte j of a block holds weight j (low nibble) and weight j + 16 (high nibble). `qdata` is
  uint8 [..., F, D / 2]. (llama.cpp's q4_0 uses the same scale rule and nibble order.)

Which weights are quantized (`QUANTIZED_WEIGHTS`): the experts, the attention projections and the
LM head. Not the token embeddings (a lookup reads one row per token), the norms, nor the routers'
gates: a gate's error would change which experts run, and it is tiny. The LM head keeps 8 bits
when the rest takes 4, as llama.cpp keeps its output matrix at 6 bits in its 4-bit types.

Legend: F ffn hidden (a weight's outputs), D model dim (its inputs), E experts, X leading dims.
(Tensors with a dimension of groups have no suffix; the comments give their shapes.)
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

GROUP_MULTIPLE = 32
"""Group sizes are multiples of this: a 4-bit nibble block, and whole vectors for every ISA's kernel."""
QUANTIZED_WEIGHTS = re.compile(r"(^|\.)(experts\.w[123]|attn\.[qkvo]_proj\.weight|lm_head\.weight)$")
"""State-dict names of the weights that `emomoe quantize` stores as integers (see the module docstring)."""
HEAD_MIN_BITS = 8


def quantized_bits(name: str, bits: int) -> int | None:
    """The bits weight `name` is stored with in a `bits`-bit model, None if it stays float."""
    if not QUANTIZED_WEIGHTS.search(name):
        return None
    return max(bits, HEAD_MIN_BITS) if name.endswith("lm_head.weight") else bits


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """Integer weights and their group scales, standing for the float tensor of shape `shape`.

    Indexing and reshaping apply to the leading (non-input) dims and return views: a layer's
    routed experts `w[:r]`, the shared ones flattened into one matrix.
    """

    qdata: torch.Tensor
    """int8 [..., F, D] (8 bits) or uint8 [..., F, D / 2] (4 bits): the dtype says which."""
    scales: torch.Tensor
    """float32 [..., F, D / group_size]."""

    @property
    def bits(self) -> int:
        return 8 if self.qdata.dtype == torch.int8 else 4

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.qdata.shape[:-1], self.qdata.shape[-1] * 8 // self.bits))

    @property
    def group_size(self) -> int:
        return self.shape[-1] // self.scales.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.qdata.device

    @property
    def nbytes(self) -> int:
        return self.qdata.nbytes + self.scales.nbytes

    def dim(self) -> int:
        return self.qdata.dim()

    def is_contiguous(self) -> bool:
        return self.qdata.is_contiguous() and self.scales.is_contiguous()

    def __getitem__(self, index) -> QuantizedTensor:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) >= self.dim() or Ellipsis in index:
            raise IndexError("a QuantizedTensor is indexed on its leading dims only, never its inputs")
        return QuantizedTensor(self.qdata[index], self.scales[index])

    def transpose(self, dim0: int, dim1: int) -> QuantizedTensor:
        last = self.dim() - 1
        if last in (dim0 % self.dim(), dim1 % self.dim()):
            raise ValueError("a QuantizedTensor's input dim (the last) cannot be transposed")
        return QuantizedTensor(self.qdata.transpose(dim0, dim1), self.scales.transpose(dim0, dim1))

    def reshape(self, *shape: int) -> QuantizedTensor:
        """Reshape to `shape`, whose last dim is the inputs, or whole rows of them side by side (the
        shared experts' down projections, [S, D, F] -> [D, S * F]): groups never straddle rows."""
        *lead, last = shape
        if last == -1 and -1 not in lead:
            last = self.shape.numel() // torch.Size(lead).numel()
        if last <= 0 or last % self.shape[-1]:
            raise ValueError(f"cannot reshape a QuantizedTensor of shape {list(self.shape)} to {list(shape)}")
        per_row = last // self.shape[-1]
        qdata = self.qdata.reshape(*lead, per_row * self.qdata.shape[-1])
        scales = self.scales.reshape(*lead, per_row * self.scales.shape[-1])
        return QuantizedTensor(qdata, scales)

    def integers(self) -> torch.Tensor:
        """The integers, one int8 per weight, [..., F, D] (4 bits: unpacked, in [-8, 7])."""
        return self.qdata if self.bits == 8 else _unpack_nibbles(self.qdata)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float tensor these integers stand for, in `dtype`."""
        groups = self.integers().reshape(*self.scales.shape, -1)
        return (groups * self.scales[..., None]).reshape(self.shape).to(dtype)

    def state(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores for weight `name`."""
        return {f"{name}.qdata": self.qdata, f"{name}.scales": self.scales}


def is_group_size(group_size: object) -> bool:
    """Whether `group_size` is one the format allows: a positive multiple of `GROUP_MULTIPLE`."""
    return isinstance(group_size, int) and group_size > 0 and group_size % GROUP_MULTIPLE == 0


def check_group_size(group_size: int, inputs: int) -> None:
    if not is_group_size(group_size) or inputs % group_size:
        raise ValueError(
            f"group_size: {group_size} must be a multiple of {GROUP_MULTIPLE} that divides the {inputs} inputs of the weight"
        )


def quantize(w: torch.Tensor, bits: int, group_size: int) -> QuantizedTensor:
    """`w` [..., F, D] as `bits`-bit integers with one scale per `group_size` inputs (see the module
    docstring); computed in float32 whatever `w`'s dtype."""
    if bits not in (8, 4):
        raise ValueError(f"bits: {bits} is not 8 or 4")
    check_group_size(group_size, w.shape[-1])
    groups = w.float().reshape(*w.shape[:-1], -1, group_size)  # [..., groups, group_size]
    if bits == 8:
        scales = groups.abs().amax(-1) / 127  # [..., groups]
        ints = _divide(groups, scales).round().clamp(-127, 127)
        return QuantizedTensor(ints.to(torch.int8).reshape(w.shape), scales.contiguous())
    extremes = groups.gather(-1, groups.abs().argmax(-1, keepdim=True)).squeeze(-1)
    scales = extremes / -8
    ints = _divide(groups, scales).round().clamp(-8, 7) + 8
    return QuantizedTensor(_pack_nibbles(ints.to(torch.uint8).reshape(w.shape)), scales.contiguous())


def _divide(groups: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """w / scale per group; an all-zero group (scale 0) quantizes to zeros, not NaN."""
    safe = torch.where(scales == 0, torch.ones_like(scales), scales)
    return groups / safe[..., None]


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 values < 16, [..., D] -> [..., D / 2] in the 32-weight block layout."""
    halves = q.reshape(*q.shape[:-1], -1, 2, 16)  # [..., blocks, low/high, 16]
    return (halves[..., 0, :] | (halves[..., 1, :] << 4)).reshape(*q.shape[:-1], -1)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `_pack_nibbles`: [..., D / 2] -> int8 values in [-8, 7], [..., D]."""
    blocks = packed.reshape(*packed.shape[:-1], -1, 16)
    halves = torch.stack([blocks & 15, blocks >> 4], dim=-2)
    return (halves.to(torch.int8) - 8).reshape(*packed.shape[:-1], -1)


class QuantizedWeight(nn.Module):
    """A quantized weight in a model, in place of its float `nn.Parameter`: the module's buffers
    `qdata` and `scales` are what a checkpoint stores (`<weight name>.qdata`, `.scales`). It is
    used through `tensor()`; indexing and `shape` forward to it, as the experts' code needs."""

    def __init__(self, quantized: QuantizedTensor):
        super().__init__()
        self.register_buffer("qdata", quantized.qdata)
        self.register_buffer("scales", quantized.scales)

    def tensor(self) -> QuantizedTensor:
        return QuantizedTensor(self.qdata, self.scales)

    @property
    def shape(self) -> torch.Size:
        return self.tensor().shape

    def __getitem__(self, index) -> QuantizedTensor:
        return self.tensor()[index]

    def extra_repr(self) -> str:
        quantized = self.tensor()
        return f"bits={quantized.bits}, shape={list(quantized.shape)}, group_size={quantized.group_size}"


def install_quantized(model: nn.Module, name: str, quantized: QuantizedTensor) -> None:
    """Replace parameter `name` (e.g. `layers.0.moe.experts.w1`) of `model` by a `QuantizedWeight`."""
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    expected = tuple(getattr(owner, attr).shape)
    if tuple(quantized.shape) != expected:
        raise ValueError(f"{name}: quantized weights of shape {list(quantized.shape)}, the model has {list(expected)}")
    delattr(owner, attr)
    owner.add_module(attr, QuantizedWeight(quantized))
