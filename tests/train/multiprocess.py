"""Training with N gloo processes on this CPU, launched the way torchrun does (environment
variables), continuing a run from one of its checkpoints, and comparing the losses of runs."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from emomoe import distributed
from emomoe.train.config import RunConfig
from emomoe.train.metrics import TIMING_KEYS, read_metrics
from emomoe.train.trainer import train

COMPARED = ("ce", "lb", "router_z", "logit_z", "total", "grad_norm", "tokens", "val/all")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world_size: int, port: int) -> None:
    """The environment torchrun gives rank `rank` (`train` joins the group from it)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )


def _worker(rank: int, world_size: int, port: int, cfg_dict: dict, run_dir: str, resume: bool) -> None:
    join_group(rank, world_size, port)
    try:
        train(RunConfig.from_dict(cfg_dict), run_dir, resume=resume, progress=False)
    finally:
        distributed.shutdown()


def train_processes(cfg: RunConfig, run_dir: Path, world_size: int, resume: bool = False) -> None:
    mp.spawn(_worker, args=(world_size, free_port(), cfg.to_dict(), str(run_dir), resume), nprocs=world_size)


def assert_same_losses(reference: Path, run: Path, steps: list[int], rel: float) -> None:
    """The metrics of `steps` in two run directories agree to `rel` (and both runs have them)."""
    ref = {r["step"]: r for r in read_metrics(reference / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(run / "metrics.jsonl")}
    assert sorted(got) == sorted(ref)
    for step in steps:
        for key in COMPARED:
            assert (key in got[step]) == (key in ref[step]), (step, key)
            if key in ref[step]:
                assert got[step][key] == pytest.approx(ref[step][key], rel=rel, abs=1e-6), (step, key)


def continue_from(run: Path, step_dir: str, out: Path) -> Path:
    """A run directory holding `run`'s config, metrics and only its checkpoint `step_dir`."""
    (out / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(run / name, out / name)
    shutil.copytree(run / "checkpoints" / step_dir, out / "checkpoints" / step_dir)
    return out


def untimed_metrics(run: Path) -> list[dict]:
    """A run's metrics without the wall-clock fields, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run / "metrics.jsonl")]
