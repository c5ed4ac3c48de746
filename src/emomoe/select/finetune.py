"""Fine-tuning a subset on its domain: AdamW, small LR, 10% warmup then linear decay to 0, one epoch.

The recipe follows the paper's (lr 5e-5, no weight decay, clipping at 1.0, all parameters
trained, the model's own auxiliary losses kept on). An epoch is one pass over the domain's
training windows in a seeded order. The result is saved like the subset itself, with the
fine-tuning recorded in its selection.json, so it can be evaluated or merged back.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emomoe.checkpoint import check_fits, load_model, save_model
from emomoe.data.loader import DataConfig, TrainLoader
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError
from emomoe.model.losses import compute_loss
from emomoe.select.subset import SELECTION_FILE, read_selection, save_subset
from emomoe.train.config import LRSchedule, TrainConfig
from emomoe.train.optim import build_optimizer
from emomoe.train.schedule import build_scheduler


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
    lr: float = 5e-5,
    num_epochs: float = 1.0,
    max_steps: int = 0,
    seq_len: int = 256,
    batch_size: int = 8,
    warmup_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `subset_dir` on `domains` of `store` and save it to `out_dir`; returns what was done."""
    if num_epochs <= 0 or max_steps < 0 or not 0.0 <= warmup_fraction < 1.0:
        raise ConfigError(
            f"num_epochs > 0, max_steps >= 0 and warmup_fraction in [0, 1) expected, "
            f"got {num_epochs}, {max_steps}, {warmup_fraction}"
        )
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    domains = finetune_domains(subset_dir, domains)
    model, cfg = load_model(subset_dir)
    check_fits(cfg, subset_dir, vocab_size=store.vocab_size, seq_len=seq_len)
    torch.manual_seed(seed)
    data_cfg = DataConfig(store=str(store.path), seq_len=seq_len, batch_size=batch_size, seed=seed, domains=domains)
    loader = TrainLoader(store, data_cfg)
    num_steps = math.ceil(num_epochs * loader.num_windows / batch_size)
    if max_steps:
        num_steps = min(num_steps, max_steps)
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
        out = model(batch["input_ids_BS"], doc_ids_BS=batch["doc_ids_BS"])
        loss = compute_loss(out, batch["labels_BS"], cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        loss["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss["ce"].item())
        bar.set_postfix(ce=f"{losses[-1]:.3f}")
    done = {
        "source": str(Path(subset_dir).resolve()), "store": str(store.path), "domains": domains, "lr": lr,
        "num_steps": num_steps, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
        "first_ce": losses[0], "last_ce": losses[-1],
    }
    model.eval()
    if (Path(subset_dir) / SELECTION_FILE).is_file():
        record = read_selection(subset_dir)
        save_subset(out_dir, model, cfg, {**record, "finetune": [*record.get("finetune", []), done]})
    else:
        save_model(out_dir, model, cfg, meta={"finetune": done})
    return done
