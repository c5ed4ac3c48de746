"""Choosing the next token from logits: greedy, or sampling with temperature and top-p (nucleus).

Pure functions of the logits (and a seeded generator for the draw).

Legend: B batch rows, V vocab.
"""

from __future__ import annotations

import torch

from emomoe.generate.config import GenerationConfig


def top_p_keep(probs_BV: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean [B, V]: the nucleus, i.e. every token whose more likely tokens hold less than `top_p`.

    The most likely token is always kept.
    """
    sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
    mass_before_BV = sorted_BV.cumsum(dim=-1) - sorted_BV
    keep_sorted_BV = mass_before_BV < top_p
    keep_sorted_BV[:, 0] = True
    return torch.zeros_like(keep_sorted_BV).scatter(-1, order_BV, keep_sorted_BV)


def sampling_probs(logits_BV: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The distribution the next token is drawn from: softmax(logits / T) restricted to the nucleus."""
    probs_BV = (logits_BV.float() / temperature).softmax(dim=-1)
    if top_p < 1:
        probs_BV = probs_BV * top_p_keep(probs_BV, top_p)
        probs_BV = probs_BV / probs_BV.sum(dim=-1, keepdim=True)
    return probs_BV


def next_tokens(logits_BV: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row [B]: the argmax if greedy, else a draw from `sampling_probs`."""
    if cfg.is_greedy:
        return logits_BV.argmax(dim=-1)
    probs_BV = sampling_probs(logits_BV, cfg.temperature, cfg.top_p)
    return torch.multinomial(probs_BV, 1, generator=generator)[:, 0]
