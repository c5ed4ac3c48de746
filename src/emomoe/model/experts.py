"""A layer's SwiGLU experts as stacked tensors, run dropless.

Legend: T tokens, D model dim, F ffn hidden (of one expert; of all shared experts together in
`_shared`), E experts, K routed experts per token, N = T*K rows (the routed (token, expert) slots).

Routed slots are sorted by expert so every expert sees one contiguous block of its tokens; one
grouped matmul (or one matmul per non-empty expert where `torch._grouped_mm` is missing or does
not support the dtype or shapes) runs them, and the weighted outputs are scattered back. Shared
experts (the last indices) run densely on every token with weight 1.0. Weights stored narrower
than the activations (a bf16 or integer subset computing in fp32) go through `emomoe.model.linear`,
which reads only the experts that have tokens; the shared experts then join the routed ones' calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emomoe import kernels
from emomoe.model.init import DEFAULT_STD, init_weight_
from emomoe.model.linear import DECODE_ROWS, grouped_linear, is_stored_narrower, linear

HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")


# Run eagerly under torch.compile: the kernel's fake (tracing) implementation accepts only bf16.
@torch.compiler.disable
def grouped_matmul(x_ND: torch.Tensor, w_EFD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """Rows of `x_ND` sorted by expert, `counts_E` rows each: row n -> x_n @ w[e(n)].T, shape [N, F]."""
    offsets_E = counts_E.cumsum(0).to(torch.int32)
    return torch._grouped_mm(x_ND, w_EFD.transpose(-2, -1), offs=offsets_E)


def expert_matmul(x_ND: torch.Tensor, w_EFD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """`grouped_matmul` where the kernel supports the dtype and row alignment, else `looped_matmul`;
    `grouped_linear` for weights stored narrower than `x_ND`.

    Fewer rows than experts on the CPU (decoding a token or a few) also go to `looped_matmul`: the
    CPU kernel runs a matmul for every expert, empty ones included, and most are empty then.
    """
    if is_stored_narrower(x_ND, w_EFD):
        return grouped_linear(x_ND, w_EFD, counts_E.cpu())
    if x_ND.device.type == "cpu" and x_ND.shape[0] < w_EFD.shape[0]:
        return looped_matmul(x_ND, w_EFD, counts_E)
    if (
        HAS_GROUPED_MM
        and x_ND.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and (w_EFD.shape[1] * x_ND.element_size()) % 16 == 0
        and (w_EFD.shape[2] * x_ND.element_size()) % 16 == 0
    ):
        return grouped_matmul(x_ND, w_EFD, counts_E)
    return looped_matmul(x_ND, w_EFD, counts_E)


def looped_matmul(x_ND: torch.Tensor, w_EFD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """Same as `grouped_matmul`, one matmul per non-empty expert (needs the counts on the host)."""
    blocks = x_ND.split(counts_E.tolist())
    return torch.cat([block @ w_EFD[e].T for e, block in enumerate(blocks) if block.shape[0]])


class _SwiGLU(torch.autograd.Function):
    """silu(g) * u through the fused kernels: one pass forward, one backward (2.3x autograd's ops)."""

    @staticmethod
    def forward(ctx, g_NF: torch.Tensor, u_NF: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g_NF, u_NF)
        return kernels.ops().swiglu_forward(g_NF, u_NF)

    @staticmethod
    def backward(ctx, grad_NF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.ops().swiglu_backward(grad_NF, *ctx.saved_tensors)


def swiglu(g_NF: torch.Tensor, u_NF: torch.Tensor) -> torch.Tensor:
    """silu(g) * u: the fused kernel on float32 CPU tensors, PyTorch's two ops elsewhere."""
    if kernels.usable(g_NF, u_NF):
        return _SwiGLU.apply(g_NF, u_NF)
    return F.silu(g_NF) * u_NF


class Experts(nn.Module):
    def __init__(self, num_experts: int, num_shared: int, d_model: int, hidden: int):
        super().__init__()
        self.num_routed = num_experts - num_shared
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        for w in (self.w1, self.w2, self.w3):
            init_weight_(w, std or DEFAULT_STD)

    def forward(
        self, x_TD: torch.Tensor, experts_TK: torch.Tensor | None = None, weights_TK: torch.Tensor | None = None
    ) -> torch.Tensor:
        num_experts = self.w1.shape[0]
        decoding = x_TD.shape[0] <= DECODE_ROWS
        if experts_TK is not None and self.num_routed < num_experts and decoding and is_stored_narrower(x_TD, self.w1):
            # Decoding with weights kept narrow (a deployed subset): the shared experts are experts
            # every token picks with weight 1, so one kernel call per projection runs them with the
            # routed ones (a decoded token pays per call, ~20 us). A prompt keeps the dense path
            # below, a GEMM over widened tiles, and full-width weights train faster on it.
            shared_TS = torch.arange(self.num_routed, num_experts, device=x_TD.device).expand(x_TD.shape[0], -1)
            experts_TK = torch.cat([experts_TK, shared_TS], dim=1)
            weights_TK = torch.cat([weights_TK, weights_TK.new_ones(shared_TS.shape)], dim=1)
            return self._routed(x_TD, experts_TK, weights_TK, num_experts)
        out_TD = self._shared(x_TD)
        if experts_TK is not None:
            out_TD = out_TD + self._routed(x_TD, experts_TK, weights_TK, self.num_routed)
        return out_TD

    def _shared(self, x_TD: torch.Tensor) -> torch.Tensor:
        r = self.num_routed
        if r == self.w1.shape[0]:
            return torch.zeros_like(x_TD)
        # The shared experts side by side are one SwiGLU whose F is all their hidden units: plain 2-D
        # matmuls, and the sum over the experts happens inside the last one (1.1-1.4x a broadcast
        # batched matmul).
        d_model = x_TD.shape[1]
        w1_FD, w3_FD = self.w1[r:].reshape(-1, d_model), self.w3[r:].reshape(-1, d_model)
        w2_DF = self.w2[r:].transpose(0, 1).reshape(d_model, -1)
        return linear(swiglu(linear(x_TD, w1_FD), linear(x_TD, w3_FD)), w2_DF)

    def _routed(self, x_TD: torch.Tensor, experts_TK: torch.Tensor, weights_TK: torch.Tensor, r: int) -> torch.Tensor:
        """Each token through its experts among the first `r`, weighted and summed."""
        top_k = experts_TK.shape[1]
        slots_N = experts_TK.flatten()
        order_N = slots_N.argsort(stable=True)
        token_N = order_N // top_k
        counts_E = torch.zeros(r, dtype=torch.long, device=x_TD.device)
        counts_E.scatter_add_(0, slots_N, torch.ones_like(slots_N))
        x_ND = x_TD.index_select(0, token_N)  # its backward is index_add_, ~2x faster than indexing's
        weights_N1 = weights_TK.flatten().index_select(0, order_N)[:, None]
        w1, w2, w3 = (w if r == self.w1.shape[0] else w[:r] for w in (self.w1, self.w2, self.w3))
        h_NF = swiglu(expert_matmul(x_ND, w1, counts_E), expert_matmul(x_ND, w3, counts_E))
        # The down projection is linear, so the routing weight can scale its input or its output:
        # whichever is narrower (fine-grained experts: F < D, 4% of a training step).
        if h_NF.shape[1] < x_TD.shape[1]:
            y_ND = expert_matmul(h_NF * weights_N1, w2, counts_E)
        else:
            y_ND = expert_matmul(h_NF, w2, counts_E) * weights_N1
        return torch.zeros_like(x_TD).index_add_(0, token_N, y_ND)
