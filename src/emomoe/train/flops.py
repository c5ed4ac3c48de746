"""Model FLOPs per token and the model-FLOP-utilisation estimate.

Matmul FLOPs count 2 per multiply-add and the backward pass costs twice the forward, hence the
factor 6 (Kaplan et al. 2020; PaLM appendix B):
- weights: 6 x (active parameters outside the embedding tables + the LM head, which is a matmul);
- attention scores and mixing (QK^T and AV): 2 matmuls x 2 x seq_len x d_model per token and layer,
  halved for causality, times 3 for forward + backward = 6 x num_layers x seq_len x d_model.
Routers, norms and softmaxes are left out: they are a rounding error at these sizes.
"""

from __future__ import annotations

from emomoe.model.config import ModelConfig


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
