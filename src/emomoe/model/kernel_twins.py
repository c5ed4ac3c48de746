"""Every fused kernel beside its PyTorch twin, as one table.

A kernel and its twin meet in one model function: it runs the kernel on float32 CPU tensors and
the twin inside `kernels.disabled()` (and on every other tensor). Each entry names the function,
the kernels it calls, and runs it on fixed float32 example inputs, returning its outputs and the
gradients of its inputs; tests/model/test_kernel_twins.py runs every entry both ways and compares.
A new kernel gets an entry here, or that test fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from emomoe.model.docs import Segments
from emomoe.model.experts import swiglu
from emomoe.model.linear import grouped_linear
from emomoe.model.losses import IGNORE_INDEX, lm_head_loss
from emomoe.model.norm import RMSNorm
from emomoe.model.pool import draw_pool_sizes, pooled_softmax
from emomoe.model.quantized import quantize
from emomoe.model.router import top_experts


@dataclass(frozen=True)
class Twin:
    function: str
    """The model function, whose PyTorch branch is the twin."""
    ops: tuple[str, ...]
    """The kernels (`torch.ops.emomoe` names) it calls where they apply."""
    run: Callable[[], dict[str, torch.Tensor]]
    """Outputs and input gradients on example inputs, the same on every call."""
    tolerance: float | None = None
    """Largest difference from the twin, relative to each output's largest magnitude, for a kernel
    that rounds more than float32 arithmetic does; None: float32 rounding only."""


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _grads(outputs: torch.Tensor, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...], g) -> dict:
    """Gradients of sum(outputs * upstream) for a random upstream: every output element counts."""
    upstream = torch.randn(outputs.shape, generator=g)
    return dict(zip(names, torch.autograd.grad((outputs * upstream).sum(), inputs)))


def _top_experts() -> dict[str, torch.Tensor]:
    scores_TE = torch.randn(300, 61, generator=_generator())
    return {"indices_TK": top_experts(scores_TE, 7)}


def _pooled_softmax() -> dict[str, torch.Tensor]:
    g = _generator()
    starts_BS = torch.rand(2, 512, generator=g) < torch.tensor([0.01, 0.2])[:, None]  # long and short documents
    segments = Segments.from_doc_ids(starts_BS.long().cumsum(1))
    logits_TE = (3 * torch.randn(2 * 512, 61, generator=g)).requires_grad_()
    sizes_G = draw_pool_sizes(4, 40, segments.num_segments, 7, logits_TE.device)
    pooled_TE, keep_GE = pooled_softmax(logits_TE, segments.seg_T, segments.num_segments, sizes_G)
    return {"pooled_TE": pooled_TE, "keep_GE": keep_GE, **_grads(pooled_TE, (logits_TE,), ("logits_grad_TE",), g)}


def _rms_norm() -> dict[str, torch.Tensor]:
    g = _generator()
    norm = RMSNorm(300, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(300, generator=g) + 0.5)
    x_ND = (3 * torch.randn(70, 300, generator=g)).requires_grad_()
    y_ND = norm(x_ND)
    return {"y_ND": y_ND, **_grads(y_ND, (x_ND, norm.weight), ("x_grad_ND", "weight_grad_D"), g)}


def _swiglu() -> dict[str, torch.Tensor]:
    g = _generator()
    g_NF, u_NF = ((3 * torch.randn(64, 96, generator=g)).requires_grad_() for _ in range(2))
    h_NF = swiglu(g_NF, u_NF)
    return {"h_NF": h_NF, **_grads(h_NF, (g_NF, u_NF), ("g_grad_NF", "u_grad_NF"), g)}


def _lm_head_loss() -> dict[str, torch.Tensor]:
    g = _generator()
    num_tokens, vocab = 199, 40003  # several chunks, the last one short; not a multiple of a vector
    hidden_BSD = torch.randn(1, num_tokens, 6, generator=g).requires_grad_()
    weight_VD = torch.randn(vocab, 6, generator=g).requires_grad_()
    labels_BS = torch.randint(0, vocab, (1, num_tokens), generator=g)
    labels_BS[0, 1::3] = IGNORE_INDEX
    loss = lm_head_loss(hidden_BSD, weight_VD, labels_BS, logit_z_weight=0.3)
    hidden_grad_BSD, weight_grad_VD = torch.autograd.grad(loss.total, (hidden_BSD, weight_VD))
    return {"ce": loss.ce, "logit_z": loss.logit_z, "hidden_grad_BSD": hidden_grad_BSD,
            "weight_grad_VD": weight_grad_VD}


def _grouped_linear() -> dict[str, torch.Tensor]:
    g = _generator()
    # Inputs not a multiple of a vector and outputs not of the kernel's 4-row blocks; two experts
    # without rows, which the kernel must skip.
    x_ND = torch.randn(9, 203, generator=g)
    w_EFD = torch.randn(5, 70, 203, generator=g).bfloat16()
    return {"y_NF": grouped_linear(x_ND, w_EFD, torch.tensor([3, 0, 4, 2, 0]))}


def _int_grouped_linear() -> dict[str, torch.Tensor]:
    g = _generator()
    x_ND = torch.randn(9, 256, generator=g)
    w_EFD = torch.randn(5, 70, 256, generator=g)
    counts_E = torch.tensor([3, 0, 4, 2, 0])
    return {f"y{bits}_NF": grouped_linear(x_ND, quantize(w_EFD, bits, 64), counts_E) for bits in (8, 4)}


TWINS = (
    Twin("emomoe.model.router.top_experts", ("topk_indices",), _top_experts),
    Twin("emomoe.model.pool.pooled_softmax", ("pool_softmax",), _pooled_softmax),
    Twin("emomoe.model.norm.RMSNorm", ("rms_norm_forward", "rms_norm_backward"), _rms_norm),
    Twin("emomoe.model.experts.swiglu", ("swiglu_forward", "swiglu_backward"), _swiglu),
    Twin("emomoe.model.losses.lm_head_loss", ("cross_entropy_rows",), _lm_head_loss),
    Twin("emomoe.model.linear.grouped_linear", ("bf16_grouped_linear",), _grouped_linear),
    # 8-bit weights multiply activations rounded to int16 per group (at most half a step of
    # amax / 32767 each; tests/model/test_quantized.py checks each output against that bound). On
    # these inputs the bound is below 1.5e-4 of the largest output.
    Twin("emomoe.model.linear.grouped_linear", ("int_grouped_linear",), _int_grouped_linear, tolerance=2**-12),
)

