"""The training loop: one `Trainer` per run, and `train()`, the library call behind `emomoe train`.

Legend: B batch, S sequence.

A step draws `num_micro_batches` micro-batches and hands them to `train.step.train_step`
(accumulation, clipping, the non-finite check, one AdamW step). Every step writes a metrics
record; every `log_every` steps it adds routing health (of the first micro-batch), every
`eval_every` steps per-domain validation loss, every `checkpoint_every` steps a checkpoint. Only
the main process writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
from tqdm.auto import tqdm

from emomoe import distributed
from emomoe.checkpoint import save_model
from emomoe.data.loader import TrainLoader, check_global_batch
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError, warn
from emomoe.model import build_model
from emomoe.model.config import ModelConfig, parse_pool
from emomoe.model.docs import Segments
from emomoe.model.losses import compute_loss
from emomoe.train import parallel
from emomoe.train.anneal import STATE_KEY as ANNEAL_STATE_KEY
from emomoe.train.anneal import AnnealStart, anneal_schedule, check_anneal_length, read_anneal_source
from emomoe.train.checkpointing import CheckpointManager, Restored, step_dir_name
from emomoe.train.config import Precision, RunConfig
from emomoe.train.flops import measure_peak_flops, mfu, train_flops_per_token
from emomoe.train.init_from import check_architecture, load_initial_weights, load_weights
from emomoe.train.metrics import MetricsWriter
from emomoe.train.optim import build_optimizer
from emomoe.train.rng import capture_rng_state, restore_rng_state, seed_everything
from emomoe.train.routing_health import routing_health
from emomoe.train.rundir import FINAL_DIR, check_run_dir, claim_run_dir, holds_run
from emomoe.train.runtime import setup_runtime, thread_governor
from emomoe.train.schedule import build_scheduler
from emomoe.train.sharded import load_shards
from emomoe.train.step import TrainingDiverged, check_finite_weights, train_step
from emomoe.train.stop_request import StopRequest
from emomoe.train.validation import Validator


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after a checkpoint was written."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    step: int
    val_loss: dict[str, float]
    """The last validation pass: domain name (and "all") -> mean CE in nats per token."""
    first_step: int = 0
    """The step the run started from (a resumed run's checkpoint; 0 for a new one)."""


def train(cfg: RunConfig, run_dir: str | Path, *, resume: bool = False, force: bool = False, progress: bool = True) -> TrainResult:
    """Train `cfg` into `run_dir`. Launched by torchrun, every process calls this with the same arguments."""
    run_dir = Path(run_dir)
    device = setup_runtime(cfg.train.num_threads, retain_memory=True)
    store = TokenStore.open(cfg.data.store)
    cfg = fit_to_store(cfg, store)
    if distributed.is_main_process():
        warn_if_pool_is_inert(cfg.model)
    # Every rank checks before the main one changes anything, so a refusal stops all of them.
    check_run_dir(run_dir, cfg, resume=resume, force=force)
    resuming = resume and holds_run(run_dir)
    if cfg.train.init_from and not resuming:
        check_architecture(cfg.model, cfg.train.init_from)
    checkpoints = CheckpointManager(run_dir, cfg.train.num_checkpoints_kept)
    restored = checkpoints.restore_newest() if resuming else None
    annealing = restored is None and bool(cfg.train.anneal_from)
    if annealing:
        restored = read_anneal_source(cfg.train.anneal_from)
        check_architecture(cfg.model, restored.path, "train.anneal_from")
        check_anneal_length(cfg.train, AnnealStart.of_checkpoint(restored.state))
    if restored is not None:
        # Before config.yaml takes the new settings: a refused resume changes nothing.
        check_global_batch(restored.state["ranks"][0]["loader"], cfg.data, distributed.get_world_size())
    distributed.barrier()
    if distributed.is_main_process():
        claim_run_dir(run_dir, cfg, force=force, resume=resuming)
    distributed.barrier()
    if distributed.is_main_process():
        checkpoints.remove_temporaries()
        if restored is not None:
            verb = "annealing" if annealing else "resuming"
            tqdm.write(f"{verb} from {restored.path} (step {restored.state['step']})", file=sys.stderr)
    trainer = Trainer(cfg, run_dir, store, device, resume_from=restored, anneal=annealing)
    return trainer.run(progress=progress)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def warn_if_pool_is_inert(cfg: ModelConfig) -> None:
    """A pool that always holds every routed expert restricts nothing: the run is a standard MoE."""
    bounds = parse_pool(cfg.moe.router.pool, "pool")
    routed = cfg.moe.num_experts - cfg.moe.router.num_shared_experts
    if bounds is not None and bounds[0] >= routed:
        warn(
            f"model.moe.router.pool {cfg.moe.router.pool}: every pool holds all {routed} routed experts, so this "
            f"trains a standard MoE; use pool sizes below {routed} for EMO (the paper: 8..128 of 127)"
        )


def fit_to_store(cfg: RunConfig, store: TokenStore) -> RunConfig:
    """Take the EOS id and the tokenizer hash from the token store when the model leaves them open,
    and its resolved path (a run is resumed, and its store found, from any folder); refuse a
    vocabulary too small, or an EOS or tokenizer that differs from the store's."""
    if cfg.model.vocab_size < store.vocab_size:
        raise ConfigError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the token store's vocabulary "
            f"({store.vocab_size} in {cfg.data.store})"
        )
    if cfg.model.eos_id is not None and cfg.model.eos_id != store.eos_id:
        raise ConfigError(f"model.eos_id: {cfg.model.eos_id} differs from the token store's EOS id {store.eos_id}")
    if cfg.model.tokenizer_hash and store.tokenizer_hash and cfg.model.tokenizer_hash != store.tokenizer_hash:
        raise ConfigError(
            f"model.tokenizer_hash: {cfg.model.tokenizer_hash[:12]} differs from the tokenizer of {cfg.data.store} "
            f"({store.tokenizer_hash[:12]})"
        )
    if cfg.model.vocab_size > store.vocab_size * 2 and cfg.model.vocab_size > store.vocab_size + 1024:
        warn(
            f"model.vocab_size {cfg.model.vocab_size} is much larger than the token store's vocabulary "
            f"({store.vocab_size}): the unused embedding rows cost memory and time"
        )
    model = dataclasses.replace(
        cfg.model,
        eos_id=store.eos_id if cfg.model.eos_id is None else cfg.model.eos_id,
        tokenizer_hash=cfg.model.tokenizer_hash or store.tokenizer_hash or None,
    )
    data = dataclasses.replace(cfg.data, store=str(store.path.resolve()))
    return dataclasses.replace(cfg, model=model, data=data)


class Trainer:
    def __init__(
        self, cfg: RunConfig, run_dir: Path, store: TokenStore, device: torch.device, resume_from: Restored | None = None,
        anneal: bool = False,
    ):
        """`resume_from`: a checkpoint to continue, the run's own or (with `anneal`) another run's to
        anneal from (`train.anneal`)."""
        tc = cfg.train
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        self.rank, self.world_size = distributed.get_rank(), distributed.get_world_size()
        self.is_main = distributed.is_main_process()

        seed_everything(tc.seed)
        model = build_model(cfg.model)
        model.pool_sampler.seed = tc.seed + self.rank
        if resume_from is None:
            if tc.init_from:
                load_initial_weights(model, cfg.model, tc.init_from)
        elif resume_from.weights is not None:  # a sharded checkpoint loads once the model is wrapped
            load_weights(model, resume_from.weights, str(resume_from.path))
        self.plain_model = model.to(device)
        if tc.activation_checkpointing:
            parallel.checkpoint_activations(self.plain_model)
        if tc.compile:
            parallel.compile_blocks(self.plain_model)
        self.model = parallel.wrap_model(self.plain_model, tc.parallelism, device)
        self.optimizer = build_optimizer(self.model, tc)
        self.scheduler = build_scheduler(self.optimizer, tc)
        self.loss_fn = functools.partial(compute_loss, loss_cfg=cfg.model.loss)
        self.loader = TrainLoader(store, cfg.data, rank=self.rank, world_size=self.world_size)
        self.validator = Validator(store, cfg.data.seq_len, tc.eval_batch_size, tc.num_eval_windows)
        self.checkpoints = CheckpointManager(run_dir, tc.num_checkpoints_kept)
        self.flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_len)
        self.peak_flops = self._peak_flops()
        self.threads = thread_governor(tc.num_threads)
        self.step = 0
        self.tokens_seen = 0
        self.last_checkpoint: Path | None = None
        self.checkpointed_step = -1
        self.val_loss: dict[str, float] = {}
        self.anneal: AnnealStart | None = None
        if resume_from is not None:
            self._load_state(resume_from, anneal)
            self.last_checkpoint, self.checkpointed_step = resume_from.path, self.step
        self.metrics = MetricsWriter(run_dir, tc.tensorboard) if self.is_main else None
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)

    # ----------------------------------------------------------------------------- the loop

    def run(self, progress: bool = True) -> TrainResult:
        tc = self.cfg.train
        first_step = self.step
        bar = tqdm(
            total=tc.max_steps, initial=self.step, desc=self.run_dir.name, unit="step",
            disable=not (progress and self.is_main), dynamic_ncols=True,
        )
        start = time.perf_counter()
        try:
            with StopRequest() as stop:
                while self.step < tc.max_steps:
                    record = self._train_step()
                    record["elapsed_s"] = time.perf_counter() - start
                    done = self.step == tc.max_steps
                    if _due(self.step, tc.eval_every) or done:
                        record.update(self._validate())
                    if self.metrics is not None:
                        self.metrics.write(record)
                    bar.set_postfix(loss=f"{record['ce']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                    bar.update()
                    if _due(self.step, tc.checkpoint_every) or done:
                        self.save_checkpoint()
                    if self._stop_requested(stop) and not done:
                        self._stop()
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        final_dir = self.run_dir / FINAL_DIR
        self._check_weights()
        exported = parallel.export_model(self.model, self.cfg.model)
        if exported is not None:
            save_model(final_dir, exported, self.cfg.model, meta={"step": self.step, "tokens": self.tokens_seen})
        distributed.barrier()
        val_loss = {k.removeprefix("val/"): v for k, v in self.val_loss.items()}
        return TrainResult(self.run_dir, final_dir, self.step, val_loss, first_step)

    def _train_step(self) -> dict[str, Any]:
        tc = self.cfg.train
        if self.threads is not None:
            self.threads.update()
        started = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        pool_active = tc.pool_start * tc.max_steps <= self.step < tc.pool_end * tc.max_steps
        parallel.unwrap(self.model).set_train_pool_active(pool_active)
        micro_batches = [next(self.loader) for _ in range(tc.num_micro_batches)]
        want_routing = self.is_main and (self.step % tc.log_every == 0)
        try:
            result = train_step(
                self.model, self.optimizer, micro_batches, self.loss_fn, scheduler=self.scheduler,
                grad_clip=tc.grad_clip, precision=tc.precision, keep_routing=want_routing,
            )
        except TrainingDiverged as e:
            self._diverged(e)
        health: dict[str, float] = {}
        if result.routing is not None:
            first = micro_batches[0]
            health = routing_health(
                result.routing, Segments.for_pool(first["doc_ids_BS"], first["input_ids_BS"], self.cfg.model.eos_id)
            )

        self.step += 1
        step_tokens = sum(b["input_ids_BS"].numel() for b in micro_batches) * self.world_size
        self.tokens_seen += step_tokens
        tokens_per_s = step_tokens / (time.perf_counter() - started)
        record = {
            "step": self.step,
            "tokens": self.tokens_seen,
            **result.losses,
            "grad_norm": result.grad_norm,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "threads": torch.get_num_threads(),
            **health,
        }
        if (tc.pool_start, tc.pool_end) != (0.0, 1.0):
            record["pool_active"] = int(pool_active)
        if self.peak_flops is not None:
            record["mfu"] = mfu(self.flops_per_token, tokens_per_s, self.peak_flops)
        return record

    def _peak_flops(self) -> float | None:
        """The whole run's matmul peak (all ranks), for MFU: as configured, or measured now."""
        per_process = self.cfg.train.peak_flops
        if per_process is None:
            return None
        if per_process > 0:
            return per_process * self.world_size
        dtype = torch.bfloat16 if self.cfg.train.precision is Precision.BF16 else torch.float32
        # Ranks measure at the same moment, so processes sharing a machine add up to its peak.
        distributed.barrier()
        measured = torch.tensor([measure_peak_flops(device=self.device, dtype=dtype)], device=self.device)
        return float(distributed.all_reduce_sum_(measured)[0])

    def _validate(self) -> dict[str, float]:
        model = parallel.unwrap(self.model)
        self.val_loss = self.validator(model, self.device)
        parallel.reshard(model)
        return self.val_loss

    def _stop(self) -> None:
        """Checkpoint the step just finished (unless that is done) and leave the run."""
        if self.checkpointed_step != self.step:
            self.save_checkpoint()
        message = f"stopped at step {self.step}; checkpoint {self.last_checkpoint}; continue with --resume"
        if self.is_main:
            tqdm.write(message, file=sys.stderr)
        raise TrainingInterrupted(message)

    def _stop_requested(self, stop: StopRequest) -> bool:
        flag = torch.tensor([float(stop.requested)])
        return bool(distributed.all_reduce_max_(flag).item())

    def _check_weights(self) -> None:
        """Before any save: weights the last update made non-finite end the run like a non-finite loss."""
        try:
            check_finite_weights(self.model)
        except TrainingDiverged as e:
            self.step -= 1  # the update of this step is the one that diverged
            self._diverged(e)

    def _diverged(self, error: TrainingDiverged) -> NoReturn:
        if self.metrics is not None:
            self.metrics.write({"step": self.step + 1, **error.values, "grad_norm": error.grad_norm})
        where = (
            f"last good checkpoint: {self.last_checkpoint} (continue from it with --resume, e.g. with a lower train.lr)"
            if self.last_checkpoint
            else "no checkpoint was written yet"
        )
        raise error.in_run(self.step + 1, where) from None

    # ----------------------------------------------------------------------------- state

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step (a collective: every rank must call it)."""
        self._check_weights()
        rank_states = distributed.gather_objects(
            {
                "loader": self.loader.state_dict(),
                "pool_sampler": self.plain_model.pool_sampler.state_dict(),
                "lb_history": self.plain_model.lb_history(),
                "rng": capture_rng_state(),
            }
        )
        trainer_state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "world_size": self.world_size,
            "scheduler": self.scheduler.state_dict(),
            "ranks": rank_states,
        }
        if self.anneal is not None:
            trainer_state[ANNEAL_STATE_KEY] = self.anneal.to_state()
        if parallel.is_sharded(self.model):
            path = self.checkpoints.save_sharded(self.step, self.model, self.optimizer, self.cfg.model, trainer_state)
        else:
            trainer_state["optimizer"] = parallel.optimizer_state(self.model, self.optimizer)
            exported = parallel.export_model(self.model, self.cfg.model)
            path = self.checkpoints.root / step_dir_name(self.step)
            if self.is_main:
                path = self.checkpoints.save(self.step, exported, self.cfg.model, trainer_state)
        distributed.barrier()
        self.last_checkpoint, self.checkpointed_step = path, self.step
        return path

    def _load_state(self, restored: Restored, anneal: bool) -> None:
        """Continue `restored`: the run's own checkpoint, or with `anneal` the one it anneals from,
        whose schedule gives way to the anneal's (a resumed anneal keeps its start in its state)."""
        state = restored.state
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        if restored.weights is None:
            load_shards(restored.path, self.model, self.optimizer, state["optimizer"]["param_groups"])
        else:
            parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        if anneal:
            self.anneal = AnnealStart.of_checkpoint(state)
        elif ANNEAL_STATE_KEY in state:
            self.anneal = AnnealStart(**state[ANNEAL_STATE_KEY])
        if self.anneal is None:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            schedule = anneal_schedule(self.cfg.train, self.anneal)
            self.scheduler = build_scheduler(self.optimizer, schedule, start_step=self.step)
        # On another number of processes, rank r continues saved rank r mod the old count. What must
        # carry over is the same on every rank (the global data position, the pool sampler's count
        # of forwards, the global LB window); the per-rank seeds only keep draws apart.
        mine = state["ranks"][self.rank % len(state["ranks"])]
        self.loader.load_state_dict(mine["loader"])
        self.plain_model.pool_sampler.load_state_dict(mine["pool_sampler"])
        self.plain_model.load_lb_history(mine.get("lb_history", []))
        restore_rng_state(mine["rng"])
