"""Run configuration: the model, the data and the training recipe of one run, as one YAML tree.

A YAML file may name a model preset and override some of its fields:

    model: {preset: small, moe: {router: {pool: "8..128"}}}

`RunConfig.from_dict` resolves the preset into the full model config, so the `config.yaml` a run
writes spells out every field and reloads without the preset.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from emomoe.config import Config, deep_merge, ranged
from emomoe.data.loader import DataConfig
from emomoe.data.windows import BATCH_SIZE, NUM_EVAL_WINDOWS
from emomoe.errors import ConfigError
from emomoe.model.config import ModelConfig

PRESET_KEY = "preset"
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
"""Run configs that ship inside the package (the demo's and the paper's recipes); the repository's
configs/ links here."""


class LRSchedule(enum.StrEnum):
    COSINE = "cosine"
    """Linear warmup, then cosine decay to `final_lr_ratio` x peak at `decay_steps` (the paper's)."""
    LINEAR = "linear"
    """Linear warmup, then linear decay to `final_lr_ratio` x peak at `decay_steps`. With
    `warmup_steps: 0` and `final_lr_ratio: 0` this is the paper's anneal (the decay phase of WSD):
    the LR falls linearly from `lr` to 0 over the run."""
    CONSTANT = "constant"
    """Linear warmup, then the peak rate until the end."""


class NoDecay(enum.StrEnum):
    """Which parameters AdamW leaves out of weight decay."""

    EMBEDDINGS = "embeddings"
    """Only the input embedding table: the paper's OLMo-core run (norms, router and LM head decay)."""
    EMBEDDINGS_AND_NORMS = "embeddings_and_norms"
    """The embedding table and every vector (norm weights, biases): the nanoGPT/GPT-3 convention."""


class Precision(enum.StrEnum):
    FP32 = "fp32"
    """Everything in float32. The only sensible choice on CPUs without bf16 hardware."""
    BF16 = "bf16"
    """bf16 autocast for the forward pass (GPUs); weights, gradients and optimizer stay fp32."""


class Parallelism(enum.StrEnum):
    DDP = "ddp"
    """DistributedDataParallel: every rank holds the whole model; gradients are all-reduced."""
    FSDP = "fsdp"
    """Fully sharded data parallel (FSDP2 `fully_shard` per block): for models that do not fit one device."""


@dataclasses.dataclass
class TrainConfig(Config):
    max_steps: int = ranged(1000, ge=1)
    """Optimizer steps in the run."""
    lr: float = ranged(4e-3, gt=0)
    warmup_steps: int = ranged(100, ge=0)
    warmup_from_zero: bool = False
    """Make the first update of the warmup at lr 0, as Hugging Face Trainer's schedules do (the
    paper's fine-tuning recipe); otherwise it is at lr / warmup_steps, so that no step is wasted."""
    schedule: LRSchedule = LRSchedule.COSINE
    decay_steps: int | None = None
    """Step at which the decay reaches its floor; None means `max_steps` (the paper's t_max)."""
    final_lr_ratio: float = ranged(0.1, ge=0, le=1)
    beta1: float = ranged(0.9, ge=0, lt=1)
    beta2: float = ranged(0.95, ge=0, lt=1)
    eps: float = ranged(1e-8, gt=0)
    weight_decay: float = ranged(0.1, ge=0)
    no_decay: NoDecay = NoDecay.EMBEDDINGS
    """Parameters exempt from weight decay; the default is the paper's (only the embedding)."""
    grad_clip: float = ranged(1.0, ge=0)
    """Max global gradient norm; 0 disables clipping (the norm is still logged)."""
    num_micro_batches: int = ranged(1, ge=1)
    """Gradient accumulation: micro-batches of `data.batch_size` sequences per optimizer step per rank."""
    precision: Precision = Precision.FP32
    compile: bool = False
    """torch.compile every transformer block (worth it on GPUs; compiling takes a while)."""
    activation_checkpointing: bool = False
    """Recompute each block's attention and experts in the backward pass instead of keeping their
    activations (`emomoe plan` shows what it saves). The router and the norms keep theirs, so the
    router runs once per micro-batch: its global load-balancing counts are all-reduced once."""
    parallelism: Parallelism = Parallelism.DDP
    """How to split work when launched with torchrun on several processes."""
    init_from: str | None = None
    """A model checkpoint (any format `emomoe.checkpoint.load_model` reads) whose weights start
    this run, with a fresh optimizer, schedule and data order: warm starts. Its architecture must
    match `model`; routing (pool), loss weights and the attention mask may differ. `anneal_from`
    continues another run's trainer state as well; `--resume` continues the run's own checkpoint."""
    anneal_from: str | None = None
    """OLMo-core's anneal (the paper's EMO-anneal): a run directory (its newest intact checkpoint) or
    one of its checkpoints (RUN_DIR/checkpoints/step-N), continued with its full trainer state
    (weights, AdamW moments, step, data position, RNG) under this config's model (e.g. the EMO
    router; the architecture must match, as for `init_from`). The step count goes on from the
    checkpoint's to `max_steps` in all, and the LR falls linearly from the checkpoint's LR to 0 on
    the last update (WSD's decay), so `lr`, `warmup_steps`, `schedule`, `decay_steps` and
    `final_lr_ratio` do not apply, and AdamW's betas, eps and weight decay come with its state; the
    data config must be the checkpoint run's (its order goes on)."""
    pool_start: float = ranged(0.0, ge=0, le=1)
    """Fraction of `max_steps` trained without the EMO document pool before it turns on: a
    standard-MoE phase at the start of the run. 0: the pool from the first step (the paper)."""
    pool_end: float = ranged(1.0, ge=0, le=1)
    """Fraction of `max_steps` after which training routes without the pool again. 1: to the end
    (the paper). Either bound only matters when `model.moe.router.pool` is set."""
    seed: int = 12536
    """Seed for weight initialisation and the model's pool sampler (the data order has its own seed)."""
    num_threads: int = ranged(0, ge=0)
    """CPU threads per process. 0: in a single CPU process, one thread per core that other
    processes leave free, re-decided every second as their load changes (with torchrun, the cores
    divided by the local process count). Results depend on the thread count in their last bits,
    so a run that must reproduce bit for bit on a machine shared with other jobs sets a number."""
    log_every: int = ranged(10, ge=1)
    """Steps between routing-health measurements (every step gets the other metrics)."""
    eval_every: int = ranged(0, ge=0)
    """Steps between per-domain validation passes; 0 means only at the end of the run."""
    eval_batch_size: int = ranged(BATCH_SIZE, ge=1)
    """Held-out windows per forward pass of a validation pass."""
    num_eval_windows: int = ranged(NUM_EVAL_WINDOWS, ge=0)
    """Held-out windows per domain in each validation pass, evenly spaced; 0 means all of them."""
    checkpoint_every: int = ranged(0, ge=0)
    """Steps between checkpoints; 0 means only at the end (and on Ctrl-C)."""
    num_checkpoints_kept: int = ranged(2, ge=1)
    peak_flops: float | None = ranged(0.0, ge=0)
    """Matmul FLOP/s one process can reach, the denominator of the `mfu` metric. 0 measures it once
    at the start of the run (half a second of large matmuls in the training precision, all ranks
    at once); a number skips the measurement (e.g. your accelerator's dense peak); null leaves
    `mfu` out of the metrics."""
    tensorboard: bool = True
    """Also write TensorBoard event files under RUN_DIR/tensorboard (the `tensorboard` extra; without
    it the run warns once and writes metrics.jsonl only)."""

    def validate(self) -> None:
        problems = []
        if not self.pool_start < self.pool_end:
            problems.append(f"pool_start, pool_end: expected pool_start < pool_end, got {self.pool_start}, {self.pool_end}")
        if self.init_from and self.anneal_from:
            problems.append("init_from, anneal_from: expected at most one (weights only, or a run's whole state), got both")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            problems.append(f"decay_steps: expected more than warmup_steps ({self.warmup_steps}), got {self.decay_steps}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def total_decay_steps(self) -> int:
        return self.decay_steps if self.decay_steps is not None else self.max_steps


@dataclasses.dataclass
class RunConfig(Config):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> RunConfig:
        return super().from_dict(cls.expand(data) if isinstance(data, dict) else data, path)

    @classmethod
    def expand(cls, data: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data.get("model"), dict) and PRESET_KEY in data["model"]:
            return {**data, "model": resolve_model_preset(data["model"])}
        return data

    def validate(self) -> None:
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len: {self.data.seq_len} exceeds model.max_seq_len ({self.model.max_seq_len})"
            )


def config_path(spec: str | Path) -> Path:
    """A run config file: `spec` itself if it exists, else the shipped config of that name (`demo-emo`)."""
    path = Path(spec)
    shipped = SHIPPED_CONFIGS / f"{path.name.removesuffix('.yaml')}.yaml"
    if not path.exists() and path.parent == Path(".") and shipped.is_file():
        return shipped
    if not path.exists():
        names = ", ".join(sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml")))
        raise ConfigError(f"{path}: config file not found (shipped configs, usable by name: {names})")
    return path


def resolve_model_preset(model: dict[str, Any]) -> dict[str, Any]:
    """Expand `{preset: NAME, **overrides}` into the preset's full field tree with the overrides merged in."""
    overrides = dict(model)
    name = overrides.pop(PRESET_KEY)
    try:
        base = ModelConfig.preset(str(name)).to_dict()
    except ConfigError as e:
        raise ConfigError(f"model.preset: {e}") from None
    return deep_merge(base, overrides)
