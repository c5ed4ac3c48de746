"""Fine-tuning a subset (or any model) on its domain, with the paper's recipe (spec section 8.4).

The recipe: AdamW, lr 5e-5, no weight decay, 10% warmup then linear decay to 0, clipping at 1.0,
one epoch, all parameters trained. Routing is the HF model's: no document pool, even for a full
EMO checkpoint. The loss is that of HF fine-tuning: CE plus only the Switch load-balancing loss
at 0.01, local to the batch and averaged over layers (the HF `router_aux_loss_coef`); router and
output-logit z-losses stay off unless asked for.

Data is either domains of a token store (packed windows, every token a label) or a jsonl file
of prompt/answer pairs (one example per row; with `answer_only`, the paper's choice, only the
answer tokens are labels, and the load balancing counts those tokens too).

The result is saved like the source, with the fine-tuning recorded (in selection.json for a
subset), so it can be evaluated or merged back.

Legend: B batch, S sequence, T tokens, E routed experts of a layer.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emomoe.checkpoint import check_fits, load_config, load_model, save_model
from emomoe.config import Config
from emomoe.data.loader import DataConfig, TrainLoader
from emomoe.data.pairs import PairLoader, read_pairs
from emomoe.data.store import TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.model.losses import IGNORE_INDEX, cross_entropy_and_logit_z, load_balancing_loss
from emomoe.model.transformer import ModelOutput
from emomoe.select.subset import SELECTION_FILE, read_selection, save_subset
from emomoe.train.config import LRSchedule, TrainConfig
from emomoe.train.optim import build_optimizer
from emomoe.train.schedule import build_scheduler

HF_ROUTING = ["moe.router.pool=off", "moe.router.eval_pool=off", "moe.router.lb_scope=local"]
"""How fine-tuning routes: like the HF model, with no document pool and batch-local balancing."""


@dataclasses.dataclass
class FinetuneLoss(Config):
    lb_weight: float = 0.01
    """Switch load balancing, averaged over MoE layers (HF `router_aux_loss_coef`)."""
    router_z_weight: float = 0.0
    """Router z-loss, averaged over MoE layers; off in the HF recipe."""
    logit_z_weight: float = 0.0
    """Output-logit z-loss; off in the HF recipe."""

    def validate(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if value < 0:
                raise ConfigError(f"{name}: expected a weight >= 0, got {value}")


def finetune_loss(out: ModelOutput, labels_BS: torch.Tensor, weights: FinetuneLoss) -> dict[str, torch.Tensor]:
    """CE (+ logit z) over label tokens, plus the per-layer Switch LB over the same tokens, averaged
    over the MoE layers; `out` must carry the routing (`return_routing=True`)."""
    ce, logit_z = cross_entropy_and_logit_z(out.logits, labels_BS)
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
    lb, router_z = lb / num_layers, out.router_z_loss / num_layers
    total = ce + weights.lb_weight * lb + weights.router_z_weight * router_z + weights.logit_z_weight * logit_z
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


def finetune_subset(
    subset_dir: str | Path,
    store: str | Path | TokenStore,
    out_dir: str | Path,
    *,
    domains: list[str] | None = None,
    pairs: str | Path | None = None,
    answer_only: bool = True,
    lr: float = 5e-5,
    num_epochs: float = 1.0,
    max_steps: int = 0,
    seq_len: int = 256,
    batch_size: int = 8,
    warmup_fraction: float = 0.1,
    loss: FinetuneLoss | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `subset_dir` on `domains` of `store`, or on the prompt/answer jsonl `pairs` (tokenized
    with the store's tokenizer), and save it to `out_dir`; returns what was done."""
    if num_epochs <= 0 or max_steps < 0 or not 0.0 <= warmup_fraction < 1.0:
        raise ConfigError(
            f"num_epochs > 0, max_steps >= 0 and warmup_fraction in [0, 1) expected, "
            f"got {num_epochs}, {max_steps}, {warmup_fraction}"
        )
    loss = loss or FinetuneLoss()
    loss.validate()
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    source_cfg = load_config(subset_dir)
    check_fits(source_cfg, subset_dir, vocab_size=store.vocab_size, seq_len=seq_len)
    torch.manual_seed(seed)
    if pairs is None:
        domains = finetune_domains(subset_dir, domains)
        data_cfg = DataConfig(store=str(store.path), seq_len=seq_len, batch_size=batch_size, seed=seed, domains=domains)
        loader = TrainLoader(store, data_cfg)
        num_examples, data = loader.num_windows, {"domains": domains}
    else:
        if store.tokenizer_path is None:
            raise DataError(f"{store.path}: has no tokenizer to encode {pairs} with")
        examples = read_pairs(pairs, load_tokenizer(store.tokenizer_path))
        loader = PairLoader(examples, store.eos_id, seq_len=seq_len, batch_size=batch_size, answer_only=answer_only, seed=seed)
        num_examples, data = loader.num_examples, {"pairs": str(pairs), "answer_only": answer_only}
    num_steps = math.ceil(num_epochs * num_examples / batch_size)
    if max_steps:
        num_steps = min(num_steps, max_steps)
    model, _ = load_model(subset_dir, overrides=HF_ROUTING)
    recipe = TrainConfig(
        max_steps=num_steps, lr=lr, warmup_steps=math.ceil(warmup_fraction * num_steps),
        schedule=LRSchedule.LINEAR, final_lr_ratio=0.0, weight_decay=0.0, grad_clip=1.0,
    )
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    model.train()
    losses = []
    bar = tqdm(range(num_steps), desc="finetune", unit="step", disable=not progress)
    for _ in bar:
        batch = next(loader)
        out = model(batch["input_ids_BS"], doc_ids_BS=batch["doc_ids_BS"], return_routing=True)
        terms = finetune_loss(out, batch["labels_BS"], loss)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(terms["ce"].item())
        bar.set_postfix(ce=f"{losses[-1]:.3f}")
    done = {
        "source": str(Path(subset_dir).resolve()), "store": str(store.path), **data, "lr": lr,
        "num_steps": num_steps, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
        "loss": loss.to_dict(), "first_ce": losses[0], "last_ce": losses[-1],
    }
    model.eval()
    # Saved under the source's config: the pool-free routing above is how fine-tuning trains,
    # not a property of the model.
    if (Path(subset_dir) / SELECTION_FILE).is_file():
        record = read_selection(subset_dir)
        save_subset(out_dir, model, source_cfg, {**record, "finetune": [*record.get("finetune", []), done]})
    else:
        save_model(out_dir, model, source_cfg, meta={"finetune": done})
    return done
