"""Causal self-attention with RoPE, optional grouped-query heads, QK-norm and document masking.

Legend: B batch, S sequence (the new tokens when decoding with a cache), P cache positions
(cached and new), D model dim, H heads, R key/value heads, Dh head dim, A rotary frequencies (Dh/2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emomoe.model.kv_cache import LayerKV
from emomoe.model.linear import Linear
from emomoe.model.norm import RMSNorm


def rope_tables(max_seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each [max_seq_len, head_dim], for the rotate-half form of RoPE."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles_SA = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles_SDh = torch.cat([angles_SA, angles_SA], dim=-1)
    return angles_SDh.cos().float(), angles_SDh.sin().float()


def _rotate(x_BHSDh: torch.Tensor, cos_SDh: torch.Tensor, sin_SDh: torch.Tensor, sign: float) -> torch.Tensor:
    """x * cos + sign-rotated halves of x * sin: the rotation by +angle (sign -1) or -angle (+1)."""
    half = x_BHSDh.shape[-1] // 2
    out = x_BHSDh * cos_SDh
    out[..., :half].addcmul_(x_BHSDh[..., half:], sin_SDh[..., :half], value=sign)
    out[..., half:].addcmul_(x_BHSDh[..., :half], sin_SDh[..., half:], value=-sign)
    return out


class _Rope(torch.autograd.Function):
    """RoPE without the rotated copy of x (and its negation and concatenation): 1.8x faster forward
    and backward on the CPU. Its gradient is the inverse rotation of the incoming gradient."""

    @staticmethod
    def forward(ctx, x_BHSDh: torch.Tensor, cos_SDh: torch.Tensor, sin_SDh: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos_SDh, sin_SDh)
        return _rotate(x_BHSDh, cos_SDh, sin_SDh, -1.0)

    @staticmethod
    def backward(ctx, grad_BHSDh: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos_SDh, sin_SDh = ctx.saved_tensors
        return _rotate(grad_BHSDh, cos_SDh, sin_SDh, 1.0), None, None


def apply_rope(x_BHSDh: torch.Tensor, cos_SDh: torch.Tensor, sin_SDh: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: the pair (x_j, x_{j+Dh/2}) turns by the angle of its position and frequency.
    The tables carry no gradient."""
    if not torch.is_grad_enabled():  # decoding: no autograd node to pay for
        return _rotate(x_BHSDh, cos_SDh, sin_SDh, -1.0)
    return _Rope.apply(x_BHSDh, cos_SDh, sin_SDh)


class Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, qk_norm: bool, norm_eps: float):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.q_proj = Linear(d_model, num_heads * self.head_dim)
        self.k_proj = Linear(d_model, num_kv_heads * self.head_dim)
        self.v_proj = Linear(d_model, num_kv_heads * self.head_dim)
        self.o_proj = Linear(num_heads * self.head_dim, d_model)
        # Full-width norms over all heads, as in OLMoE (the HF `q_norm`/`k_norm` shapes).
        self.q_norm = RMSNorm(num_heads * self.head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(num_kv_heads * self.head_dim, eps=norm_eps) if qk_norm else None

    def forward(
        self,
        x_BSD: torch.Tensor,
        cos_SDh: torch.Tensor,
        sin_SDh: torch.Tensor,
        mask_B1SS: torch.Tensor | None,
        kv: LayerKV | None = None,
    ) -> torch.Tensor:
        """`mask_B1SS` (True = may attend) already includes causality; None means plain causal.

        With `kv`, the new keys and values are appended to it and the queries attend over all its
        positions: the mask is then [B, 1, S, P], and cos/sin are [B, 1, S, Dh] (per-row positions).
        """
        B, S, _ = x_BSD.shape
        q, k, v = self.q_proj(x_BSD), self.k_proj(x_BSD), self.v_proj(x_BSD)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q_BHSDh = apply_rope(q.view(B, S, self.num_heads, self.head_dim).transpose(1, 2), cos_SDh, sin_SDh)
        k_BRSDh = apply_rope(k.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2), cos_SDh, sin_SDh)
        v_BRSDh = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if kv is not None:
            k_BRSDh, v_BRSDh = kv.append(k_BRSDh, v_BRSDh)  # now [B, R, P, Dh]
        out_BHSDh = F.scaled_dot_product_attention(
            q_BHSDh, k_BRSDh, v_BRSDh,
            attn_mask=mask_B1SS,
            is_causal=mask_B1SS is None,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(out_BHSDh.transpose(1, 2).reshape(B, S, -1))
