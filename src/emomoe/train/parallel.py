"""Data parallelism for the trainer: wrapping, activation checkpointing, gradient-sync control, and
full (unsharded) state.

Single process: wrapping and gradient sync are the identity. Under torchrun: DDP, or FSDP2 (`fully_shard`
on every transformer block, then the root). Experts need nothing special: each layer's experts are
stacked tensors, so an expert that receives no token still gets a (zero) gradient slice and DDP's
reducer never sees an unused parameter. State is keyed by the plain module's parameter names
under every strategy, so a run can resume under another one. The full state here serves DDP and
single-process checkpoints and a run's final model; FSDP checkpoints are sharded (`train.sharded`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from emomoe import distributed
from emomoe.model import build_model
from emomoe.model.config import ModelConfig
from emomoe.train.config import Parallelism

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def wrap_model(model: nn.Module, strategy: Parallelism, device: torch.device) -> nn.Module:
    if not distributed.is_distributed():
        return model
    if strategy is Parallelism.DDP:
        device_ids = [device.index] if device.type == "cuda" else None
        # Buffers are either constants or kept equal by the model's own all-reduces; broadcasting
        # them every forward would overwrite per-rank router counts.
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # Each block returns its router logits as a slice of the gate output; nothing edits them in
    # place, so FSDP2's warning about returned views does not apply.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (distributed.get_world_size(),))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def checkpoint_activations(model: nn.Module) -> None:
    """Recompute the attention and the experts of every block in the backward pass instead of
    keeping their activations (non-reentrant `torch.utils.checkpoint`), in place: parameter names,
    and so wrapping and checkpoints, stay as they are. Call it before wrapping and compiling.

    The router stays outside the recomputed parts. Recomputing it would all-reduce its global
    load-balancing counts a second time in the backward, and move the LB window twice.
    """
    for block in model.layers:
        for module in (block.attn, block.moe.experts):
            module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block in place: the module tree (and so DDP, FSDP and
    checkpoints) stays as it is, and a graph break in one block does not spread to the others."""
    for block in model.layers:
        block.compile()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DDP wrapper (FSDP2 shards in place: nothing to remove)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Under DDP, skip the gradient all-reduce on all but the last micro-batch of a step.

    FSDP reduce-scatters every micro-batch instead: skipping it would keep every gradient
    unsharded, at full size in every process, until the last micro-batch (measured: +1x the
    model's fp32 bytes per rank with 2 micro-batches), the memory FSDP exists to save.
    """
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    yield


def reshard(model: nn.Module) -> None:
    """Return FSDP2's root parameters to their sharded form after a forward without backward.

    Evaluation leaves the root unsharded, which would hand the optimizer and checkpointing
    parameters it does not know. No-op for other strategies.
    """
    if hasattr(model, "reshard"):
        model.reshard()


def export_model(model: nn.Module, cfg: ModelConfig) -> nn.Module | None:
    """A plain, unsharded module holding the current weights, on the main process (None elsewhere).

    Every rank must call it: under FSDP gathering the shards is a collective.
    """
    plain = unwrap(model)
    if not is_sharded(plain):
        return plain if distributed.is_main_process() else None
    state = get_model_state_dict(plain, options=_FULL)
    if not distributed.is_main_process():
        return None
    with torch.device("meta"):
        copy = build_model(cfg)
    copy.load_state_dict(state, assign=True)
    return copy


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimizer state keyed by parameter name (a collective under FSDP)."""
    return get_optimizer_state_dict(unwrap(model), optimizer, options=_FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    plain = unwrap(model)
    # Full-state loading scatters shards, which needs a process group; a plain module takes the
    # name-keyed state as it is.
    options = StateDictOptions(full_state_dict=is_sharded(plain))
    set_optimizer_state_dict(plain, optimizer, state, options=options)


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP shards the parameters (over more than one process)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in unwrap(model).parameters())
