"""`emomoe plan` against the memory training really takes on this CPU, at 1, 2 and 4 processes.

For each case (a preset, its micro-batch, a number of gloo processes, DDP or FSDP, activation
checkpointing on or off) fresh processes train 3 steps on the fixture token store
(tests/assets/store) with `train_step`, and every rank reports its peak resident memory; the
largest is compared with `plan(...).total()` for the same run config and process count.

What is compared, precisely: each rank's peak RSS (VmHWM) during the 3 steps minus its RSS just
before the model was built. Left out of it, on purpose:
- the Python and torch baseline (about 300 MB a process here: interpreter, libraries, the process
  group), which no GPU pays and `plan` does not count;
- code pages touched by the first training step (about 20 MB: libtorch's kernels paged in): each
  rank first trains one step of the same model on a batch of one short row, frees it, then takes
  the baseline;
- the allocator's slack. glibc serves every block of 128 KiB or more with its own mapping
  (MALLOC_MMAP_THRESHOLD_=131072) and emomoe's retain-freed-memory setting is off, so a freed
  tensor leaves RSS at once and the peak is that of the live memory. With emomoe's defaults (what `emomoe train` runs) the heap keeps what it freed,
  fragmented: `default_allocator` measures one case that way, without the warm-up either.

The fused CPU kernels run (they keep less than the PyTorch ops), and `plan` is told so.
Prints one JSON object; `within_20_percent` is the target.

    python bench/plan_accuracy.py            # tiny and small presets, 1/2/4 processes, ~5 min
    python bench/plan_accuracy.py --quick    # the tiny preset in one process, ~10 s
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.multiprocessing as mp

from emomoe import distributed, kernels
from emomoe.data.loader import TrainLoader
from emomoe.model import build_model
from emomoe.model.losses import compute_loss
from emomoe.train import parallel
from emomoe.train.config import RunConfig
from emomoe.train.optim import build_optimizer
from emomoe.train.plan import PlanConfig, plan
from emomoe.train.runtime import reset_peak_resident, resident_bytes, setup_runtime
from emomoe.train.step import train_step

STORE = Path(__file__).resolve().parents[1] / "tests" / "assets" / "store"
STEPS = 3
GB = 10**9
TARGET = 0.2
MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc maps every block of 128 KiB or more on its own: a freed tensor leaves RSS at once."""
PRESETS = {"tiny": (64, 128), "small": (16, 256)}
"""Each preset's micro-batch (sequences x tokens): the demo's for `small`, and for `tiny` one
large enough that its activations (about 70 MB) stand well above the measurement's noise."""


@dataclasses.dataclass(frozen=True)
class Case:
    preset: str
    processes: int = 1
    parallelism: str = "ddp"
    activation_checkpointing: bool = False
    num_micro_batches: int = 1

    def run_config(self) -> RunConfig:
        batch_size, seq_len = PRESETS[self.preset]
        return RunConfig.from_dict({
            "model": {"preset": self.preset, "eos_id": 0},
            "data": {"store": str(STORE), "seq_len": seq_len, "batch_size": batch_size},
            "train": {
                "parallelism": self.parallelism, "activation_checkpointing": self.activation_checkpointing,
                "num_micro_batches": self.num_micro_batches, "num_threads": 1,
            },
        })


CHEAP = [Case("tiny", 2, "fsdp"), Case("tiny", activation_checkpointing=True)]
"""The cases tests/train/test_plan.py checks (about 10 s each)."""
FULL = [
    *(Case(preset, n, way) for preset in PRESETS for n, way in ((1, "ddp"), (2, "ddp"), (2, "fsdp"), (4, "ddp"), (4, "fsdp"))),
    *(Case(preset, n, "fsdp", activation_checkpointing=True) for preset in PRESETS for n in (1, 4)),
    Case("small", 2, "fsdp", num_micro_batches=2),
]


def train_steps(cfg: RunConfig, steps: int, batch_shape: tuple[int, int] | None = None) -> None:
    """`steps` training steps of `cfg`'s model as `emomoe train` runs them (wrapped for this process
    group, activation checkpointing as configured, AdamW), on `batch_shape` rows of the store (default:
    the config's)."""
    tc = cfg.train
    if batch_shape is not None:
        cfg = cfg.with_overrides([f"data.batch_size={batch_shape[0]}", f"data.seq_len={batch_shape[1]}"])
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model)
    if tc.activation_checkpointing:
        parallel.checkpoint_activations(model)
    model = parallel.wrap_model(model, tc.parallelism, torch.device("cpu"))
    optimizer = build_optimizer(model, tc)
    loader = TrainLoader(None, cfg.data, rank=distributed.get_rank(), world_size=distributed.get_world_size())
    loss_fn = functools.partial(compute_loss, loss_cfg=cfg.model.loss)
    for _ in range(steps):
        train_step(model, optimizer, [next(loader) for _ in range(tc.num_micro_batches)], loss_fn)


def rank_main(rank: int, world_size: int, port: int, case: Case, as_compared: bool, directory: str) -> None:
    """One rank of `case`: `as_compared` measures the way the module docstring says; otherwise with
    emomoe's defaults (freed memory retained, no warm-up)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )
    cfg = case.run_config()
    setup_runtime(cfg.train.num_threads, retain_memory=not as_compared)
    if as_compared:  # pages in the code of every op a step runs, so that the baseline holds it
        train_steps(cfg, 1, batch_shape=(1, 16))
        gc.collect()
    distributed.barrier()
    before = resident_bytes()
    reset_peak_resident()
    train_steps(cfg, STEPS)
    peak = resident_bytes(peak=True) - before
    (Path(directory) / f"rank-{rank}.json").write_text(json.dumps({"peak": peak}))
    distributed.shutdown()


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in the environment the spawned processes inherit, and the old one back afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def measure(case: Case, as_compared: bool = True) -> int:
    """The largest of every rank's peak RSS above its baseline, in bytes (see the module docstring;
    `as_compared` False: with emomoe's default allocator settings and no warm-up)."""
    directory = Path(tempfile.mkdtemp(prefix="plan-accuracy-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        with environment(MMAP_THRESHOLD if as_compared else {}):
            mp.spawn(rank_main, args=(case.processes, port, case, as_compared, str(directory)), nprocs=case.processes)
        return max(json.loads((directory / f"rank-{r}.json").read_text())["peak"] for r in range(case.processes))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def planned(case: Case) -> int:
    """What `plan` says the case takes per process, with the kernels this CPU runs."""
    cfg = case.run_config()
    fused = kernels.usable(torch.zeros(1))
    return plan(cfg, PlanConfig(gpus=case.processes), fused_kernels=fused).total()


def compare(case: Case) -> dict:
    measured, estimate = measure(case), planned(case)
    return {
        **dataclasses.asdict(case), "micro_batch": list(PRESETS[case.preset]),
        "measured_gb": round(measured / GB, 4), "planned_gb": round(estimate / GB, 4),
        "relative_error": round((estimate - measured) / measured, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one case: the tiny preset in one process")
    args = parser.parse_args()
    rows = [compare(case) for case in ([Case("tiny")] if args.quick else FULL)]
    worst = max(abs(r["relative_error"]) for r in rows)
    result = {"bench": "plan_accuracy", "quick": args.quick, "cases": rows,
              "max_relative_error": worst, "within_20_percent": worst <= TARGET}
    if not args.quick:
        case = Case("small")
        result["default_allocator"] = {
            **dataclasses.asdict(case), "planned_gb": round(planned(case) / GB, 4),
            "measured_gb": round(measure(case, as_compared=False) / GB, 4),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
