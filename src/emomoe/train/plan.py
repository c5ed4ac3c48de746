"""`emomoe plan`: will a run config fit its GPUs, and how long will a step take?

The model is built on the meta device (no memory), and every number is per GPU (per process), for
the rank that holds the most:
- parameters, gradients and AdamW's two moments, all float32, under the config's strategy: one
  process or DDP holds them whole; FSDP shards every tensor along its first dimension, rank 0
  taking the first ceil(rows / GPUs) rows;
- what the strategy adds: DDP's gradient buckets (a second copy of the gradients); FSDP's unsharded
  parameters and gradients of the root (embedding, final norm, LM head), which stay unsharded
  from the forward to the end of the backward, and of the blocks in flight (two blocks' parameters
  and one block's gradients during the backward, with prefetching);
- under bf16 autocast, the bf16 copy of every weight matrix that autocast keeps until the backward;
- activations of one micro-batch (`train.activations`), with and without activation checkpointing.
The total counts them all at once, which is where the step peaks: at the end of the forward the
activations are all there, and the backward trades them for gradients as it goes.

FLOPs per step are the model FLOPs of `train.flops` (6 x active parameters, the router gate and
only the chosen experts, plus causal attention) times the tokens of the global batch; the time per
step assumes the given MFU of the GPUs' peak.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from emomoe.checkpoint.writer import parse_size
from emomoe.config import Config, ranged
from emomoe.errors import EmomoeError
from emomoe.model import build_model
from emomoe.train.activations import Activations, MicroBatch, activation_memory
from emomoe.train.config import Precision, RunConfig
from emomoe.train.flops import train_flops_per_token

BF16 = 2
ADAM_MOMENTS = 2
GB = 10**9


class DoesNotFit(EmomoeError):
    """A run config needs more memory per GPU than the GPUs have; the message names what."""


@dataclasses.dataclass
class PlanConfig(Config):
    """The settings of `plan`: the GPUs a run config is planned for."""

    gpus: int = ranged(8, ge=1)
    """GPUs, one process each (torchrun's world size: nodes x processes per node)."""
    gpu_memory: str = "80GB"
    """Memory of one GPU: a size like 80GB, 40GB or 24GiB."""
    mfu: float = ranged(0.4, gt=0, le=1)
    """Model FLOP utilisation assumed for the time per step (fraction of the GPUs' peak)."""
    gpu_flops: float | None = ranged(None, gt=0)
    """Dense peak FLOP/s of one GPU in the run's precision (989e12: an H100's bf16); none: the
    config's train.peak_flops."""

    def validate(self) -> None:
        parse_size(self.gpu_memory, "gpu_memory")

    @property
    def gpu_memory_bytes(self) -> int:
        return parse_size(self.gpu_memory, "gpu_memory")


@dataclasses.dataclass(frozen=True)
class Plan:
    strategy: str
    """"single", "ddp" or "fsdp"."""
    gpus: int
    gpu_memory: int
    parameters: int
    """Bytes of this rank's parameters and buffers (float32; sharded under FSDP)."""
    gradients: int
    optimizer: int
    strategy_buffers: int
    """DDP's gradient buckets, or FSDP's unsharded root and blocks in flight."""
    autocast_weights: int
    """bf16 copies of the weights kept by autocast (0 in float32)."""
    activations: Activations
    checkpointed: Activations
    """The activations with activation checkpointing."""
    activation_checkpointing: bool
    """Whether the config turns it on (the total counts that one)."""
    micro_batch: MicroBatch
    num_micro_batches: int
    global_batch_tokens: int
    flops_per_step: float
    seconds_per_step: float | None
    """At the assumed MFU; None when no peak FLOP/s is known."""

    @property
    def state(self) -> int:
        """Everything but the activations."""
        return self.parameters + self.gradients + self.optimizer + self.strategy_buffers + self.autocast_weights

    def total(self, checkpointing: bool | None = None) -> int:
        use = self.activation_checkpointing if checkpointing is None else checkpointing
        return self.state + (self.checkpointed if use else self.activations).peak

    @property
    def fits(self) -> bool:
        return self.total() <= self.gpu_memory

    def problem(self) -> str | None:
        """One line naming what does not fit, or None."""
        if self.fits:
            return None
        per_gpu = f"{_gb(self.total())} per GPU exceeds the {_gb(self.gpu_memory)} of a GPU"
        if self.state > self.gpu_memory:
            unsharded = self.strategy_buffers + self.autocast_weights
            if self.strategy != "fsdp":
                remedy = "use fsdp (train.parallelism) to shard it"
            elif unsharded >= self.gpu_memory:
                remedy = f"its unsharded part ({_gb(unsharded)}) does not shrink with more GPUs"
            else:
                remedy = f"use more GPUs (its sharded part, {_gb(self.state - unsharded)}, shrinks with their number)"
            return (
                f"{per_gpu}: the model state alone takes {_gb(self.state)} per GPU ({self.strategy} on "
                f"{self.gpus} GPUs: {self._state_parts()}); {remedy}"
            )
        mb = self.micro_batch
        left = self.gpu_memory - self.state
        used = self.checkpointed if self.activation_checkpointing else self.activations
        if self.activation_checkpointing or self.checkpointed.peak > left:
            remedy = "lower data.batch_size and raise train.num_micro_batches to keep the global batch"
        else:
            remedy = f"set train.activation_checkpointing (activations {_gb(self.checkpointed.peak)}) or lower data.batch_size"
        return (
            f"{per_gpu}: the activations of a micro-batch of {mb.batch_size} x {mb.seq_len} tokens "
            f"({_gb(used.peak)}) do not fit in the {_gb(left)} left after the model state; {remedy}"
        )

    def _state_parts(self) -> str:
        parts = [("parameters", self.parameters), ("gradients", self.gradients), ("optimizer", self.optimizer),
                 (_BUFFER_NAMES[self.strategy], self.strategy_buffers), ("autocast weights", self.autocast_weights)]
        return ", ".join(f"{name} {_gb(value)}" for name, value in parts if value)

    def report(self, config: str | Path = "") -> str:
        """The plan as a table, for the terminal."""
        mb = self.micro_batch
        rows = [
            ("parameters", self.parameters),
            ("gradients", self.gradients),
            ("optimizer (AdamW moments)", self.optimizer),
            (_BUFFER_NAMES[self.strategy], self.strategy_buffers),
            ("autocast bf16 weight copies", self.autocast_weights),
            ("activations", self.activations.peak),
            ("activations, with activation checkpointing", self.checkpointed.peak),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [
            f"{config or 'run config'}: {self.strategy} on {self.gpus} GPU{'s' * (self.gpus > 1)} of {_gb(self.gpu_memory)}, "
            f"{mb.precision.value}, micro-batch {mb.batch_size} x {mb.seq_len} tokens",
            "",
            "per GPU:",
            *(f"  {name:<{width}}  {_gb(value):>9}" for name, value in rows[:-2] if value),
        ]
        for (name, value), activations in zip(rows[-2:], (self.activations, self.checkpointed)):
            largest = ", ".join(f"{term} {_gb(size)}" for term, size in activations.largest)
            lines += [f"  {name:<{width}}  {_gb(value):>9}", f"    largest: {largest}"]
        for checkpointing in (False, True):
            chosen = " (the config's)" if checkpointing == self.activation_checkpointing else ""
            label = "with" if checkpointing else "without"
            lines.append(
                f"  {'total ' + label + ' activation checkpointing':<{width}}  {_gb(self.total(checkpointing)):>9}{chosen}"
            )
        tokens = self.global_batch_tokens
        lines += [
            "",
            f"global batch: {tokens:,} tokens ({mb.batch_size} x {mb.seq_len} x {self.num_micro_batches} micro-batches "
            f"x {self.gpus} GPUs)",
            f"model FLOPs per step: {self.flops_per_step:.3e}",
        ]
        if self.seconds_per_step is None:
            lines.append("time per step: unknown (no peak FLOP/s: pass --gpu-flops or set train.peak_flops)")
        else:
            lines.append(f"time per step: {self.seconds_per_step:.2f} s ({tokens / self.seconds_per_step:,.0f} tokens/s)")
        lines.append(f"fits: {'yes' if self.fits else 'no'}")
        return "\n".join(lines)


_BUFFER_NAMES = {"single": "", "ddp": "DDP gradient buckets", "fsdp": "FSDP unsharded root and blocks"}


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def plan(run: RunConfig, cfg: PlanConfig | None = None, *, fused_kernels: bool = False) -> Plan:
    """The memory and time of a step of `run` on `cfg.gpus` GPUs. `fused_kernels`: plan for a CPU
    process that runs emomoe's fused kernels (to check a plan against this machine)."""
    cfg = cfg or PlanConfig()
    tc = run.train
    strategy = "single" if cfg.gpus == 1 else tc.parallelism.value
    with torch.device("meta"):
        model = build_model(run.model)
    full = _nbytes(model.parameters())
    buffers = _nbytes(model.buffers())
    if strategy == "fsdp":
        grads = sum(_shard_bytes(p, cfg.gpus) for p in model.parameters())
        block = max(_nbytes(block.parameters()) for block in model.layers)
        # The root's parameters and gradients, unsharded; in the backward one block's unsharded
        # gradients, its parameters and the next block's (prefetched).
        extra = 2 * _root_bytes(model) + 3 * block
    else:
        grads = full
        extra = full if strategy == "ddp" else 0  # the buckets DDP all-reduces gradients through
    autocast = BF16 * _matrix_elements(model) if tc.precision is Precision.BF16 else 0
    mb = MicroBatch(run.data.batch_size, run.data.seq_len, tc.precision, fused_kernels)
    tokens = mb.tokens * tc.num_micro_batches * cfg.gpus
    flops = train_flops_per_token(run.model, mb.seq_len) * tokens
    peak = cfg.gpu_flops if cfg.gpu_flops is not None else (tc.peak_flops or None)
    return Plan(
        strategy=strategy, gpus=cfg.gpus, gpu_memory=cfg.gpu_memory_bytes,
        parameters=grads + buffers, gradients=grads, optimizer=ADAM_MOMENTS * grads,
        strategy_buffers=extra, autocast_weights=autocast,
        activations=activation_memory(run.model, mb), checkpointed=activation_memory(run.model, mb, True),
        activation_checkpointing=tc.activation_checkpointing, micro_batch=mb,
        num_micro_batches=tc.num_micro_batches, global_batch_tokens=tokens, flops_per_step=flops,
        seconds_per_step=flops / (cfg.gpus * peak * cfg.mfu) if peak else None,
    )


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _shard_bytes(p: torch.Tensor, gpus: int) -> int:
    """Rank 0's FSDP shard of `p`: the first ceil(rows / gpus) rows (FSDP pads every rank's to that)."""
    rows = p.shape[0] if p.dim() else 1
    return math.ceil(rows / gpus) * (p.numel() // max(rows, 1)) * p.element_size()


def _root_bytes(model: nn.Module) -> int:
    """Parameters outside the blocks: the root FSDP unit (embedding, final norm, LM head)."""
    in_blocks = {id(p) for p in model.layers.parameters()}
    return _nbytes(p for p in model.parameters() if id(p) not in in_blocks)


def _matrix_elements(model: nn.Module) -> int:
    """Elements of the weights that matmuls read (autocast casts those): every parameter but the
    embedding table and the norm vectors."""
    embedding = {id(p) for p in model.embed.parameters()}
    return sum(p.numel() for p in model.parameters() if p.dim() > 1 and id(p) not in embedding)
