"""The EMO document pool as pure tensor functions, and the sampler that draws pool sizes.

Shapes: T tokens, E routed experts, G segments (documents; see `docs.Segments`).

Per document: sum the unmasked routed softmax over its tokens, keep the top-d experts and mask
the rest. Everything is vectorised over documents, with no Python loop and no device sync: the
work is one pass over [T, E] for the sums and one to spread the per-document [G, E] pools back
over the tokens, plus a sort of G rows of E.
"""

from __future__ import annotations

import hashlib

import torch

from emomoe import distributed


def document_pools(
    probs_TE: torch.Tensor, seg_T: torch.Tensor, num_segments: int, pool_sizes_G: torch.Tensor
) -> torch.Tensor:
    """Boolean [G, E]: expert e is in the pool of segment g.

    A document's pool is the `pool_sizes_G[g]` experts with the largest summed probability over
    its tokens (ties go to the lower expert index); sizes >= E keep every expert.
    """
    num_tokens, num_experts = probs_TE.shape
    # scatter_add_ rather than index_add_: on CPU the latter is ~100x slower when few segments
    # receive many rows each (one document per row).
    sums_GE = probs_TE.new_zeros(num_segments, num_experts).scatter_add_(
        0, seg_T[:, None].expand(num_tokens, num_experts), probs_TE.detach()
    )
    order_GE = sums_GE.argsort(dim=-1, descending=True, stable=True)
    rank_E = torch.arange(num_experts, device=probs_TE.device)
    keep_sorted_GE = rank_E < pool_sizes_G[:, None]
    return torch.empty_like(keep_sorted_GE).scatter_(1, order_GE, keep_sorted_GE)


def pool_logit_bias(keep_GE: torch.Tensor, seg_T: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[T, E]: 0 where the expert is in the pool of the token's segment, -inf outside.

    Adding it to the logits masks them: the addition passes gradients through untouched (they are
    exactly zero outside the pool after the softmax), where masked_fill would zero them in another
    pass; and gathering G rows of a bias is cheaper on the CPU than a masked_fill of [T, E].
    """
    bias_GE = torch.zeros(keep_GE.shape, dtype=dtype, device=keep_GE.device).masked_fill_(~keep_GE, float("-inf"))
    return bias_GE.index_select(0, seg_T)


class PoolSampler:
    """Deterministic pool-size draws: one seed per (forward, layer), from a base seed and a counter.

    Resuming from `state_dict()` replays the same sizes. Layers receive a plain integer seed, not a
    generator, so recomputing a layer's forward (activation checkpointing) draws the same sizes.
    The data-parallel rank is part of every seed, so ranks draw independent sizes for their
    different documents.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.num_forwards = 0

    def next_forward(self) -> int:
        """Reserve the index of a new training forward pass."""
        self.num_forwards += 1
        return self.num_forwards - 1

    def layer_seed(self, forward_index: int, layer: int) -> int:
        key = f"{self.seed}:{distributed.get_rank()}:{forward_index}:{layer}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "num_forwards": self.num_forwards}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.num_forwards = int(state["num_forwards"])


def draw_pool_sizes(
    low: int, high: int, num_tokens: int, num_segments: int, seed: int | None, device: torch.device
) -> torch.Tensor:
    """Sizes ~ U{low..high} for segments 0..num_segments-1 (from torch's global RNG if seed is None).

    One value is drawn per token position (the most segments there can be), so segment g gets
    the same size whether `num_segments` is exact or an upper bound.
    """
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    sizes_T = torch.randint(low, high + 1, (num_tokens,), generator=generator)
    return sizes_T[:num_segments].to(device, non_blocking=True)
