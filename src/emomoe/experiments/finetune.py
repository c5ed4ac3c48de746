"""Fine-tuning a subset (or any model) on its domain, with the paper's recipe (spec section 8.4).

The recipe is the official scripts' (`scripts/selective_hf`, `src/hf_training/finetune.py`): HF
Trainer's AdamW (betas 0.9 and 0.999, eps 1e-8) at lr 5e-5 with no weight decay, a linear warmup
from 0 over 10% of the steps then linear decay to 0, clipping at 1.0, a global batch of 32 (as
accumulated forwards of `batch_size` rows where memory is short), one epoch, all parameters trained.
Routing is the HF model's: no document pool, even for a full
EMO checkpoint. The loss is that of HF fine-tuning: CE plus only the Switch load-balancing loss
at 0.01, local to the batch and averaged over layers (the HF `router_aux_loss_coef`); router and
output-logit z-losses stay off unless asked for. Each step is the trainer's (`train.step`): the
fused LM head, the routers' bias balancing when the model has it, and a non-finite loss or
gradient stops the run before anything is saved.

Data is either domains of a token store (packed windows in a seeded order, every token a label)
or a jsonl file of prompt/answer pairs (one example per row; with `answer_only`, the paper's
choice, only the answer tokens are labels, and the load balancing counts those tokens too).

The result is saved like the source, with the fine-tuning recorded (in selection.json for a
subset), so it can be evaluated or merged back.

Legend: B batch, S sequence, T tokens, E routed experts of a layer.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emomoe.checkpoint import check_fits, load_config, load_model, save_model
from emomoe.checkpoint.selection import SELECTION_FILE, read_selection
from emomoe.config import Config, ranged
from emomoe.data.loader import DataConfig, TrainLoader, eval_batches
from emomoe.data.pairs import Batch, Example, PairLoader, read_pairs
from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.data.windows import HeldOutConfig
from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_write_text, refuse_existing
from emomoe.model.losses import IGNORE_INDEX, language_model_loss, load_balancing_loss, router_losses
from emomoe.model.transformer import ModelOutput
from emomoe.select.subset import save_subset
from emomoe.train.checkpointing import CheckpointManager
from emomoe.train.config import LRSchedule, TrainConfig
from emomoe.train.metrics import METRICS_FILE, MetricsWriter, read_metrics
from emomoe.train.optim import build_optimizer
from emomoe.train.rng import capture_rng_state, restore_rng_state
from emomoe.train.runtime import setup_runtime, thread_governor
from emomoe.train.schedule import build_scheduler
from emomoe.train.step import TrainingDiverged, check_finite_weights, train_step
from emomoe.train.stop_request import StopRequest
from emomoe.train.trainer import TrainingInterrupted
from emomoe.train.validation import loss_by_domain

HF_ROUTING = ["moe.router.pool=off", "moe.router.eval_pool=off", "moe.router.lb_scope=local"]
"""How fine-tuning routes: like the HF model, with no document pool and batch-local balancing."""


@dataclasses.dataclass
class FinetuneLoss(Config):
    lb_weight: float = ranged(0.01, ge=0)
    """Switch load balancing, averaged over MoE layers (HF `router_aux_loss_coef`)."""
    router_z_weight: float = ranged(0.0, ge=0)
    """Router z-loss, averaged over MoE layers; off in the HF recipe."""
    logit_z_weight: float = ranged(0.0, ge=0)
    """Output-logit z-loss; off in the HF recipe."""


def finetune_loss(out: ModelOutput, labels_BS: torch.Tensor, weights: FinetuneLoss) -> dict[str, torch.Tensor]:
    """CE (+ logit z) over label tokens, plus the per-layer Switch LB over the same tokens, averaged
    over the MoE layers; `out` must carry the routing (`return_routing=True`), and a fused LM-head
    loss (`out.lm_loss`) must have used `weights.logit_z_weight`."""
    ce, logit_z, lm_total = language_model_loss(out, labels_BS, weights.logit_z_weight)
    valid_T = labels_BS.reshape(-1) != IGNORE_INDEX
    layers = [r for r in out.routing if r.experts_TK.shape[1] > 0]
    lb = ce.new_zeros(())
    for routing in layers:
        probs_TE = routing.router_logits_TE[valid_T].softmax(dim=-1)
        experts = routing.experts_TK[valid_T]
        counts_E = probs_TE.new_zeros(probs_TE.shape[1]).scatter_add_(
            0, experts.flatten(), torch.ones_like(experts.flatten(), dtype=probs_TE.dtype)
        )
        lb = lb + load_balancing_loss(probs_TE, counts_E, max(int(valid_T.sum()), 1), experts.shape[1])
    num_layers = max(len(layers), 1)
    lb, router_z = lb / num_layers, router_losses(out)[1] / num_layers
    total = lm_total + weights.lb_weight * lb + weights.router_z_weight * router_z
    return {"ce": ce, "lb": lb, "router_z": router_z, "logit_z": logit_z, "total": total}


def finetune_domains(subset_dir: str | Path, domains: list[str] | None) -> list[str]:
    """The domains to fine-tune on: as given, else those the subset was selected on."""
    if domains:
        return domains
    has_selection = (Path(subset_dir) / SELECTION_FILE).is_file()
    calibration = read_selection(subset_dir).get("calibration") if has_selection else None
    if calibration and calibration.get("source") == "store":
        return list(calibration["domains"])
    raise ConfigError(f"{subset_dir}: was not selected on token-store domains; name the domains to fine-tune on")


GLOBAL_BATCH_SIZE = 32
"""Examples per optimizer step in the paper's fine-tuning (8 per device x 4 accumulated)."""


@dataclasses.dataclass
class FinetuneRecipe(Config):
    """How a model is fine-tuned: the paper's recipe by default (module docstring)."""

    lr: float = ranged(5e-5, gt=0)
    """Peak learning rate of AdamW (HF Trainer's: betas 0.9 and 0.999, eps 1e-8, no weight decay),
    reached after a linear warmup from 0 and decaying linearly to 0."""
    num_epochs: float = ranged(1.0, gt=0)
    """Passes over the training data."""
    max_steps: int = ranged(0, ge=0)
    """Stop after this many optimizer steps; 0 means no limit."""
    warmup_fraction: float = ranged(0.1, ge=0, lt=1)
    """Share of the steps the learning rate warms up over."""
    global_batch_size: int = ranged(GLOBAL_BATCH_SIZE, ge=1)
    """Examples per optimizer step: forwards of at most batch_size rows whose gradients accumulate
    (windows of a token store: rounded up to whole forwards of batch_size)."""
    answer_only: bool = True
    """With prompt/answer pairs: the loss counts the answer tokens only, as in the paper."""
    loss: FinetuneLoss = dataclasses.field(default_factory=FinetuneLoss)
    """The terms of the loss besides the cross-entropy, and their weights."""
    seed: int = 0
    """Seed of the order the training windows (or pairs) are visited in."""

    def train_config(self, num_steps: int) -> TrainConfig:
        """The optimizer and schedule of a run of `num_steps` steps, as HF Trainer sets them up."""
        return TrainConfig(
            max_steps=num_steps, lr=self.lr, warmup_steps=math.ceil(self.warmup_fraction * num_steps),
            warmup_from_zero=True, schedule=LRSchedule.LINEAR, final_lr_ratio=0.0, beta1=0.9, beta2=0.999,
            eps=1e-8, weight_decay=0.0, grad_clip=1.0,
        )


@dataclasses.dataclass
class FinetuneConfig(FinetuneRecipe, HeldOutConfig):
    domains: list[str] | None = None
    """Domains of the store to train on; None means those the subset was selected on. With
    prompt/answer pairs, the domains whose held-out loss is measured before and after."""
    checkpoint_every: int = ranged(0, ge=0)
    """Steps between checkpoints that a resumed run continues from; 0 means only on Ctrl-C / SIGTERM."""
    num_threads: int = ranged(0, ge=0)
    """CPU threads, as in training: 0 runs one per core that other processes leave free, re-decided
    every second as their load changes; a number fixes them (results differ in their last bits
    between thread counts)."""


def recipe_config(recipe: FinetuneRecipe, **fields: Any) -> FinetuneConfig:
    """A `FinetuneConfig` that trains with `recipe`, its other fields set by `fields`."""
    return FinetuneConfig(**{f.name: getattr(recipe, f.name) for f in dataclasses.fields(FinetuneRecipe)}, **fields)


def finetune_subset(
    subset_dir: str | Path,
    store: str | Path | TokenStore | None,
    out_dir: str | Path,
    config: FinetuneConfig | None = None,
    *,
    pairs: str | Path | Sequence[Example] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """Train `subset_dir` on `domains` of `store`, or on prompt/answer `pairs`: a jsonl file
    (tokenized with the store's tokenizer) or examples tokenized already (then `store` may be None),
    and save it to `out_dir` (an existing one only with `force`); returns what was done, with the
    held-out loss per domain before and after (with `pairs`: of the `domains` named, if any).
    `fields` set fields of `config` (default: `FinetuneConfig()`), e.g. `lr=1e-3, max_steps=100`.

    Each optimizer step sees `global_batch_size` windows or examples, in forwards of `batch_size`
    rows whose gradients accumulate. Examples are visited in a seeded order, epoch by epoch; the
    last step of the last epoch takes only what is left of it, as HF Trainer's does.

    Until it finishes, the run lives in a work directory beside `out_dir` (`.<name>.finetune`):
    per-step metrics.jsonl and, every `checkpoint_every` steps and on Ctrl-C / SIGTERM, a
    checkpoint that `resume=True` continues from, bitwise as if uninterrupted. `out_dir` gets the
    model, its selection.json (with this fine-tuning recorded) and metrics.jsonl.
    """
    config = (config or FinetuneConfig()).replace(**fields)
    setup_runtime(config.num_threads, retain_memory=True)
    # The training below reads these as plain names.
    batch_size, global_batch_size, loss = config.batch_size, config.global_batch_size, config.loss
    num_eval_windows, checkpoint_every = config.num_eval_windows, config.checkpoint_every
    out_dir = Path(out_dir)
    refuse_existing(out_dir, force)
    work = out_dir.with_name(f".{out_dir.name}.finetune")
    if work.exists() and not resume:
        if not force:
            raise DataError(f"{work}: an interrupted fine-tuning into {out_dir} is there; pass --resume to continue "
                            "it or --force to start over")
        shutil.rmtree(work)
    tokenized = pairs is not None and not isinstance(pairs, (str, Path))
    if store is None and not tokenized:
        raise ConfigError("fine-tuning on windows or on a pairs file needs a token store")
    store = store if store is None or isinstance(store, TokenStore) else TokenStore.open(store)
    domains = (config.domains or []) if pairs is not None else finetune_domains(subset_dir, config.domains)
    # Saved and checkpointed under its own config; trained with the HF routing (no pool).
    cfg = load_config(subset_dir)
    seq_len = config.seq_len or cfg.max_seq_len
    if store is not None:
        check_fits(
            cfg, subset_dir, vocab_size=store.vocab_size, seq_len=seq_len, tokenizer_hash=store.tokenizer_hash,
            any_tokenizer=config.any_tokenizer,
        )
    # The model's fused LM head computes the logit z term with the model config's weight.
    model, _ = load_model(subset_dir, overrides=[*HF_ROUTING, f"loss.logit_z_weight={loss.logit_z_weight}"])
    torch.manual_seed(config.seed)
    run = {"source": str(Path(subset_dir).resolve()), "domains": domains, "lr": config.lr, "batch_size": batch_size,
           "global_batch_size": global_batch_size, "seq_len": seq_len, "seed": config.seed, "loss": loss.to_dict()}
    if pairs is None:
        data_cfg = DataConfig(
            store=str(store.path), seq_len=seq_len, batch_size=batch_size, seed=config.seed, domains=domains
        )
        loader = TrainLoader(store, data_cfg)
        num_examples = loader.num_windows
    else:
        if tokenized:
            if store is None and cfg.eos_id is None:
                raise ConfigError(f"{subset_dir}: the model config has no eos_id to end the examples with")
            examples = list(pairs)
            run["pairs"] = {"num_examples": len(examples), "sha256": _examples_digest(examples)}
        elif store.tokenizer_path is None:
            raise DataError(f"{store.path}: has no tokenizer to encode {pairs} with")
        else:
            examples = read_pairs(pairs, load_tokenizer(store.tokenizer_path))
            run["pairs"] = str(pairs)
        loader = PairLoader(
            examples, cfg.eos_id if store is None else store.eos_id, seq_len=seq_len, batch_size=batch_size,
            answer_only=config.answer_only, seed=config.seed,
        )
        num_examples = loader.num_examples
        run["answer_only"] = config.answer_only
    # Windows are a stream read in whole batches; examples are counted exactly.
    per_step = global_batch_size if pairs is not None else math.ceil(global_batch_size / batch_size) * batch_size
    num_visits = math.ceil(config.num_epochs * num_examples)
    num_steps = math.ceil(num_visits / per_step)
    if config.max_steps:
        num_steps = min(num_steps, config.max_steps)
    run["num_steps"] = num_steps

    def micro_batches(step: int) -> list[Batch]:
        if pairs is None:
            return [next(loader) for _ in range(per_step // batch_size)]
        size = min(per_step, num_visits - step * per_step)
        return [loader.take(min(batch_size, size - start)) for start in range(0, size, batch_size)]

    recipe = config.train_config(num_steps)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    held_out = _held_out_loss(store, domains, seq_len, batch_size, num_eval_windows)
    checkpoints = CheckpointManager(work, num_kept=1)
    restored = checkpoints.restore_newest() if resume else None
    if restored is None:
        step, val_before = 0, held_out(model)
    else:
        state = restored.state
        if state["run"] != run:
            changed = sorted(k for k in run if state["run"].get(k) != run[k])
            raise DataError(f"{restored.path}: cannot resume, the interrupted run had another {', '.join(changed)} "
                            "(pass --force to start over)")
        model.load_state_dict(restored.weights)
        step, val_before = state["step"], state["val_before"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["ranks"][0]["loader"])
        restore_rng_state(state["ranks"][0]["rng"])
    metrics = MetricsWriter(work, tensorboard=False)
    metrics.truncate_after(step)

    def diverged(error: TrainingDiverged, at_step: int) -> TrainingDiverged:
        metrics.write({"step": at_step, **error.values, "grad_norm": error.grad_norm})
        metrics.close()
        return error.in_run(at_step, f"{out_dir} was not written; metrics in {work} (start over with --force, "
                                     "e.g. with a lower --lr)")

    def save_checkpoint() -> Path:
        check_finite_weights(model)
        state = {"step": step, "tokens_seen": step * per_step * seq_len, "world_size": 1,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "ranks": [{"loader": loader.state_dict(), "rng": capture_rng_state()}], "val_before": val_before,
                 "run": run}
        return checkpoints.save(step, model, cfg, state)

    loss_fn = functools.partial(finetune_loss, weights=loss)
    threads = thread_governor(config.num_threads)
    model.train()
    bar = tqdm(total=num_steps, initial=step, desc="finetune", unit="step", disable=not progress)
    with StopRequest() as stop, bar:
        while step < num_steps:
            if threads is not None:
                threads.update()
            started = time.perf_counter()
            lr_now = scheduler.get_last_lr()[0]
            batches = micro_batches(step)
            try:
                terms = train_step(
                    model, optimizer, batches, loss_fn, scheduler=scheduler, grad_clip=recipe.grad_clip
                ).losses
            except TrainingDiverged as e:
                raise diverged(e, step + 1) from None
            step += 1
            tokens_per_s = sum(b["input_ids_BS"].numel() for b in batches) / (time.perf_counter() - started)
            metrics.write({
                "step": step, **{k: terms[k] for k in ("ce", "lb", "total")}, "lr": lr_now, "tokens_per_s": tokens_per_s,
                "threads": torch.get_num_threads(),
            })
            bar.update()
            if (checkpoint_every and step % checkpoint_every == 0) or (stop.requested and step < num_steps):
                try:
                    path = save_checkpoint()
                except TrainingDiverged as e:
                    raise diverged(e, step) from None
                if stop.requested:
                    metrics.close()
                    message = f"stopped at step {step}; checkpoint {path}; continue with --resume"
                    tqdm.write(message, file=sys.stderr)
                    raise TrainingInterrupted(message)
    try:
        check_finite_weights(model)
        val_after = held_out(model)
        if not all(map(math.isfinite, val_after.values())):
            nan = float("nan")
            raise TrainingDiverged({"total": nan}, nan, f"the held-out loss is not finite ({val_after})")
    except TrainingDiverged as e:
        raise diverged(e, step) from None
    metrics.write({"step": step, **{f"val/{d}": v for d, v in val_after.items()}})
    metrics.close()
    records = read_metrics(metrics.path)
    done = {
        **run, "store": None if store is None else str(store.path), "first_ce": records[0]["ce"], "last_ce": records[-2]["ce"],
        "val_before": val_before, "val_after": val_after, "num_tokens": step * per_step * seq_len,
    }
    model.eval()
    if (Path(subset_dir) / SELECTION_FILE).is_file():
        record = read_selection(subset_dir)
        save_subset(out_dir, model, cfg, {**record, "finetune": [*record.get("finetune", []), done]})
    else:
        save_model(out_dir, model, cfg, meta={"finetune": done})
    atomic_write_text(out_dir / METRICS_FILE, metrics.path.read_text())
    shutil.rmtree(work)
    return done


def _examples_digest(examples: Sequence[Example]) -> str:
    """A short fingerprint of tokenized examples, which a resumed run must be given again."""
    ids = [[e.prompt_ids, e.answer_ids] for e in examples]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def _held_out_loss(store: TokenStore | None, domains: list[str], seq_len: int, batch_size: int, num_windows: int):
    """model -> mean held-out CE per domain (of the domains with validation data)."""
    with_val = [d for d in domains if store is not None and store.num_tokens(Split.VAL, [d]) > 1]

    def measure(model: torch.nn.Module) -> dict[str, float]:
        if not with_val:
            return {}
        batches = eval_batches(store, Split.VAL, seq_len=seq_len, batch_size=batch_size, domains=with_val,
                               max_windows_per_domain=num_windows or None)
        return {d: stats.loss for d, stats in loss_by_domain(model, batches, store.domains).items()}

    return measure
