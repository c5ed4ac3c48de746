"""AdamW with two parameter groups: decayed, and exempt from decay (`train.no_decay`)."""

from __future__ import annotations

import torch
from torch import nn

from emomoe.train.config import NoDecay, TrainConfig


def split_decay_groups(model: nn.Module, no_decay: NoDecay = NoDecay.EMBEDDINGS) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Return (decayed, not decayed) trainable parameters, each parameter exactly once.

    Embedding tables are recognised by module type, norm weights and biases by being vectors.
    The untied LM head is a matrix and is decayed, as in OLMo-core.
    """
    embedding_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)
    }
    exempt_vectors = no_decay is NoDecay.EMBEDDINGS_AND_NORMS
    decay, exempt = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (exempt if id(p) in embedding_ids or (exempt_vectors and p.ndim < 2) else decay).append(p)
    return decay, exempt


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, exempt = split_decay_groups(model, cfg.no_decay)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    # The fused kernel updates each tensor in one pass: 3x faster than the foreach default on the
    # CPU here (35 vs 113 ms per step for 30M parameters), and what HF's Trainer uses by default.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
