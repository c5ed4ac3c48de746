"""Model FLOPs per token, the machine's measured matmul peak, and model FLOP utilisation (MFU).

Matmul FLOPs count 2 per multiply-add and the backward pass costs twice the forward, hence the
factor 6 (Kaplan et al. 2020; PaLM appendix B):
- weights: 6 x (active parameters outside the embedding tables + the LM head, which is a matmul);
  the router gate counts all its rows, a token's experts only the top-k and the shared ones;
- attention scores and mixing (QK^T and AV): 2 matmuls x 2 x seq_len x d_model per token and layer,
  halved for causality, times 3 for forward + backward = 6 x num_layers x seq_len x d_model.
Norm weights are in the parameter count although they are not matmuls (under 0.1% here); softmaxes
and elementwise work are left out. `torch.utils.flop_counter` agrees where it sees the kernels (the
tests check it); it does not see the grouped expert matmul or the CPU flash-attention kernel.

The peak is measured, not assumed: the best FLOP/s of a few large fp32 (or, if faster, bf16) matmuls
on the device, taken in about half a second. MFU = model FLOPs per token x tokens/s / peak.
"""

from __future__ import annotations

import time

import torch

from emomoe.model.config import ModelConfig

# Square matmuls big enough to reach the BLAS peak on a CPU core, small enough to time quickly.
PEAK_SIZES = (1024, 2048)
PROBE_SIZE = 256
"""A matmul that takes milliseconds even where a dtype is emulated: it estimates the rate first."""
_MIN_REPS = 3
"""`matmul_flops_per_s` runs at least this many matmuls."""
_OVERRUN = 4
"""A size is measured if its matmuls take at most this many times its share of the time."""


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    _, active_body = cfg.num_params(embeddings=False)
    lm_head = cfg.vocab_size * cfg.d_model
    return 6.0 * (active_body + lm_head) + 6.0 * cfg.num_layers * seq_len * cfg.d_model


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Achieved training FLOP/s as a fraction of `peak_flops` (the whole run's peak: all processes)."""
    return flops_per_token * tokens_per_s / peak_flops


def gemm_flops(m: int, k: int, n: int) -> float:
    """FLOPs of an [m, k] @ [k, n] matmul."""
    return 2.0 * m * k * n


def model_gemm_shapes(cfg: ModelConfig, num_tokens: int) -> dict[str, tuple[int, int, int]]:
    """The forward matmuls of one training micro-batch of `num_tokens` tokens, as (m, k, n).

    Experts get the average rows per routed expert (num_tokens x top_k / routed experts) of the
    first MoE layer. The backward runs the transposed shapes of the same sizes.
    """
    d, hidden = cfg.d_model, cfg.moe.expert_hidden_size
    shapes = {
        "attention_q": (num_tokens, d, cfg.num_heads * cfg.head_dim),
        "attention_kv": (num_tokens, d, cfg.kv_heads * cfg.head_dim),
        "lm_head": (num_tokens, d, cfg.vocab_size),
    }
    routed = cfg.moe.routed_in_layer(0)
    if routed:
        rows = max(1, num_tokens * cfg.moe.top_k_in_layer(0) // routed)
        shapes["expert_up"] = (rows, d, hidden)
        shapes["expert_down"] = (rows, hidden, d)
    if cfg.moe.router.num_shared_experts:
        shapes["shared_expert_up"] = (num_tokens, d, hidden)
    return shapes


def matmul_flops_per_s(
    m: int, k: int, n: int, *, seconds: float = 0.25, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """Best FLOP/s of repeated [m, k] @ [k, n] matmuls (at least two) within about `seconds`."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    for rep in range(1000):
        _sync(out)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(out)
        if rep > 0:  # the first call pays for packing buffers and page faults
            best = min(best, time.perf_counter() - start)
        if rep > 1 and time.perf_counter() > deadline:
            break
    return gemm_flops(m, k, n) / best


def measure_peak_flops(
    seconds: float = 0.5, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """This process's matmul peak, using the current threads: the best FLOP/s of large square
    matmuls in float32 or `dtype`, whichever is faster. A CPU without bf16 units runs bf16 matmuls
    slower than float32 ones, and autocast keeps some ops in float32, so a bf16 run can beat a bf16
    peak: MFU would read above 1. Bounded: a small matmul first estimates the rate, and sizes whose
    matmuls would take far longer than their share of `seconds` are left out."""
    dtypes = list(dict.fromkeys([torch.float32, dtype]))
    share = seconds / (len(PEAK_SIZES) * len(dtypes))
    best = 0.0
    for kind in dtypes:
        rate = matmul_flops_per_s(PROBE_SIZE, PROBE_SIZE, PROBE_SIZE, seconds=0, device=device, dtype=kind)
        for size in PEAK_SIZES:
            if _MIN_REPS * gemm_flops(size, size, size) / rate > _OVERRUN * share:
                break
            rate = max(rate, matmul_flops_per_s(size, size, size, seconds=share, device=device, dtype=kind))
        best = max(best, rate)
    return best


def _sync(t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)
