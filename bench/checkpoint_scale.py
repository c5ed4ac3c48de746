"""Memory and time of one training checkpoint save at 1, 2 and 4 processes: sharded (what an FSDP
run writes now) against the full gather it replaced.

Each (world size, way of saving) runs in fresh gloo processes on this CPU. Every rank builds a
model of the emo-1b14b family, scaled down, on the meta device, shards it with FSDP and
materialises only its own shards, then takes one AdamW step so the optimizer holds both moments.
Then, with the peak RSS reset just before (/proc/self/clear_refs), it saves once:
- sharded: `CheckpointManager.save_sharded`, the trainer's FSDP checkpoint: every rank writes and
  hashes its own shards;
- full: the trainer's other path, which every FSDP checkpoint took before: the whole model and
  optimizer gathered onto rank 0 (`parallel.export_model`, `parallel.optimizer_state`) and written
  by it (`CheckpointManager.save`). At 1 process the model is not wrapped at all: a
  single-process run's checkpoint, as it still is.
A sharded save at 1 process runs a one-rank FSDP group, which the trainer never does (one process
writes the full format); it is there as the start of the trend.

Prints one JSON line: the model and optimizer bytes, and per world size each way's peak RSS of
every rank during the save, its RSS just before, the slowest rank's wall time, and the target
(sharded: every rank's peak <= (model + optimizer bytes) / world size + 0.5 GB).

    python bench/checkpoint_scale.py           # 186M parameters, 2.2 GB of model + AdamW state
    python bench/checkpoint_scale.py --quick   # 9M parameters at 1 and 2 processes, seconds

Files go to a temporary directory (the system's, or --dir) and are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from emomoe.model import ModelConfig, build_model
from emomoe.train import parallel
from emomoe.train.checkpointing import CheckpointManager
from emomoe.train.config import Parallelism, TrainConfig
from emomoe.train.optim import build_optimizer
from emomoe.train.runtime import reset_peak_resident, resident_bytes

GB = 10**9
TARGET_SLACK_BYTES = GB // 2
FULL_SIZE = ["num_layers=3", "d_model=512", "num_heads=8", "moe.expert_hidden_size=256", "vocab_size=32768", "eos_id=0"]
QUICK_SIZE = ["num_layers=2", "d_model=128", "num_heads=4", "moe.expert_hidden_size=64", "vocab_size=8192", "eos_id=0"]


def model_config(quick: bool) -> ModelConfig:
    return ModelConfig.preset("emo-1b14b").with_overrides(QUICK_SIZE if quick else FULL_SIZE)


def trained_state(cfg: ModelConfig, wrap: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model (FSDP-sharded when `wrap`) with only this rank's shards in memory, after one AdamW step."""
    with torch.device("meta"):
        model = build_model(cfg)
    if wrap:
        model = parallel.wrap_model(model, Parallelism.FSDP, torch.device("cpu"))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.uniform_(-0.02, 0.02)
    optimizer = build_optimizer(model, TrainConfig())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def save_full(checkpoints: CheckpointManager, model, optimizer, cfg: ModelConfig, state: dict) -> None:
    """A checkpoint the way the trainer writes it without FSDP: everything gathered onto rank 0."""
    optimizer_state = parallel.optimizer_state(model, optimizer)
    exported = parallel.export_model(model, cfg)
    if dist.get_rank() == 0:
        checkpoints.save(1, exported, cfg, {**state, "optimizer": optimizer_state})
    dist.barrier()


def rank_main(rank: int, world_size: int, port: int, way: str, quick: bool, directory: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("gloo")
    cfg = model_config(quick)
    model, optimizer = trained_state(cfg, wrap=way == "sharded" or world_size > 1)
    checkpoints = CheckpointManager(Path(directory) / "run", 1)
    state = {"step": 1, "tokens_seen": 0, "world_size": world_size, "scheduler": {}, "ranks": []}
    dist.barrier()
    before = resident_bytes()
    reset_peak_resident()
    start = time.perf_counter()
    if way == "sharded":
        checkpoints.save_sharded(1, model, optimizer, cfg, state)
    else:
        save_full(checkpoints, model, optimizer, cfg, state)
    wall = time.perf_counter() - start
    record = {"rss_before": before, "peak_rss": resident_bytes(peak=True), "wall_s": wall}
    (Path(directory) / f"rank-{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def measure(world_size: int, way: str, quick: bool, root: Path) -> dict:
    directory = Path(tempfile.mkdtemp(prefix=f"{way}-{world_size}-", dir=root))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(world_size, port, way, quick, str(directory)), nprocs=world_size)
    ranks = [json.loads((directory / f"rank-{r}.json").read_text()) for r in range(world_size)]
    shutil.rmtree(directory)
    return {
        "peak_rss_gb": [round(r["peak_rss"] / GB, 3) for r in ranks],
        "rss_before_gb": [round(r["rss_before"] / GB, 3) for r in ranks],
        "wall_s": round(max(r["wall_s"] for r in ranks), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model at 1 and 2 processes")
    parser.add_argument("--dir", default=None, help="where the temporary checkpoints go")
    args = parser.parse_args()
    cfg = model_config(args.quick)
    with torch.device("meta"):
        num_params = sum(p.numel() for p in build_model(cfg).parameters())
    state_bytes = num_params * 4 * 3  # float32 weights and AdamW's two moments
    root = Path(tempfile.mkdtemp(prefix="checkpoint-scale-", dir=args.dir))
    try:
        worlds = {}
        for world_size in (1, 2) if args.quick else (1, 2, 4):
            target = state_bytes / world_size + TARGET_SLACK_BYTES
            sharded = measure(world_size, "sharded", args.quick, root)
            worlds[str(world_size)] = {
                "sharded": sharded,
                "full": measure(world_size, "full", args.quick, root),
                "sharded_target_gb": round(target / GB, 3),
                "sharded_within_target": max(sharded["peak_rss_gb"]) * GB <= target,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "bench": "checkpoint_scale", "quick": args.quick, "params": num_params,
        "model_and_optimizer_gb": round(state_bytes / GB, 3), "worlds": worlds,
    }))


if __name__ == "__main__":
    main()
