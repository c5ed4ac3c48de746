"""The EMO document pool as pure tensor functions, and the sampler that draws pool sizes.

Legend: T tokens, E routed experts, G documents (segments; see `docs.Segments`).

Per document: sum the unmasked routed softmax over its tokens, keep the top-d experts and mask
the rest. Everything is vectorised over documents, with no Python loop and no device sync: the
work is one pass over [T, E] for the sums, a sort of G rows of E, and the renormalisation of the
same softmax over each token's pool (`pooled_softmax`).
"""

from __future__ import annotations

import hashlib

import torch

from emomoe import distributed, kernels


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


def token_pools(keep_GE: torch.Tensor, seg_T: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each token's pool [T, E] as 1.0 (in its document's pool) or 0.0, in `dtype`: multiplying
    probabilities by a mask of their own dtype is 2.5x faster on CPU than by a boolean one, which
    is promoted element by element."""
    return keep_GE.to(dtype).index_select(0, seg_T)


class _PoolSoftmax(torch.autograd.Function):
    """The softmax of the pool-masked logits (see `pooled_softmax`)."""

    @staticmethod
    def forward(ctx, logits_TE, seg_T, num_segments, sizes_G):
        if kernels.usable(logits_TE):
            pooled_TE, keep_GE = kernels.ops().pool_softmax(logits_TE.detach(), seg_T, num_segments, sizes_G)
            keep_GE = keep_GE.bool()
        else:
            probs_TE = logits_TE.detach().softmax(dim=-1)
            keep_GE = document_pools(probs_TE, seg_T, num_segments, sizes_G)
            pooled_TE = probs_TE * token_pools(keep_GE, seg_T, probs_TE.dtype)
            # A pool whose every logit lies ~87+ nats below the token's best expert has underflowed
            # to zero mass: its weights stay zero rather than 0/0.
            pooled_TE.div_(pooled_TE.sum(dim=-1, keepdim=True).clamp_(min=torch.finfo(pooled_TE.dtype).tiny))
        ctx.save_for_backward(pooled_TE)
        ctx.mark_non_differentiable(keep_GE)
        return pooled_TE, keep_GE

    @staticmethod
    def backward(ctx, grad_TE, _grad_keep):
        (pooled_TE,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad_TE, pooled_TE, -1, pooled_TE.dtype), None, None, None


def pooled_softmax(
    logits_TE: torch.Tensor, seg_T: torch.Tensor, num_segments: int, sizes_G: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's softmax over its document's pool [T, E], and the pools (`document_pools`) [G, E].

    The unmasked softmax restricted to the pool and renormalised is the softmax of the pool-masked
    logits, so the pool costs no second pass of exponentials. The gradient (to `logits_TE` only)
    is the masked softmax's, exactly zero outside the pool. `seg_T` must be non-decreasing, as
    `Segments` numbers tokens. Float32 CPU tensors go through one fused kernel
    (`emomoe.kernels`, three passes over [T, E]); everything else through the PyTorch ops above.
    """
    return _PoolSoftmax.apply(logits_TE, seg_T, num_segments, sizes_G)


class PoolSampler:
    """Deterministic pool-size draws: one seed per (forward, layer), from a base seed and a counter.

    Resuming from `state_dict()` replays the same sizes. Layers receive a seed (see `seed_tensors`),
    not a generator, so recomputing a layer's forward (activation checkpointing) draws the same sizes.
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


def seed_tensors(seeds: list[int], device: torch.device) -> list[torch.Tensor]:
    """Per-layer seeds as 0-dim int64 tensors on `device`.

    A compiled block specialises on Python ints (a new seed every forward would recompile it)
    but not on tensor values; the copy goes through pinned memory, so it does not wait for the GPU.
    """
    seeds_L = torch.tensor(seeds, dtype=torch.int64)
    if device.type != "cpu":
        seeds_L = seeds_L.pin_memory().to(device, non_blocking=True)
    return list(seeds_L.unbind())


_M32 = 0xFFFFFFFF
# Multipliers below 2**31 keep every product of a 32-bit value inside int64.
_MIX = (0x61C88647, 0x7FEB352D, 0x2C1B3C6D)


def _hash32(index: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of (index, seed) in int64 tensor arithmetic, computed on their device."""
    x = (index * _MIX[0] + (seed & _M32)) & _M32
    x = x ^ ((seed >> 32) & _M32)
    x = x ^ (x >> 16)
    x = (x * _MIX[1]) & _M32
    x = x ^ (x >> 15)
    x = (x * _MIX[2]) & _M32
    return x ^ (x >> 16)


def draw_pool_sizes(
    low: int, high: int, num_segments: int, seed: torch.Tensor | int | None, device: torch.device
) -> torch.Tensor:
    """Sizes ~ U{low..high} for segments 0..num_segments-1, drawn on `device` without a host sync.

    With a seed, segment g's size is a hash of (g, seed): the same whether `num_segments` is exact
    or an upper bound, and the same on every device. Without one, torch's RNG of the device draws.
    """
    if seed is None:
        return torch.randint(low, high + 1, (num_segments,), device=device)
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    index_G = torch.arange(num_segments, dtype=torch.int64, device=device)
    return low + _hash32(index_G, seed) % (high - low + 1)
