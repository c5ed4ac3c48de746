"""Crash safety of training: SIGKILL a run again and again, resume it, and compare with a run left alone.

A tiny model trains on the shipped fixture store (tests/assets/store) in a subprocess
(`emomoe train --resume`). Each round kills it with SIGKILL, at a random moment or (every
other round) the moment a checkpoint directory starts being written, then inspects every
checkpoint on disk with its own sha256 reading of checksums.sha256. The next round resumes.
After the last kill the run finishes, and its final weights and metrics are compared with an
uninterrupted run of the same config.

Checked:
- torn_checkpoints: complete-looking checkpoints (step-*/checksums.sha256 present) whose files
  do not match their checksums, over all inspections (target 0);
- every resume starts from the newest checkpoint that was intact when the previous run died
  (resumes_from_newest_intact == resumes);
- mismatches: final tensors that differ bitwise from the uninterrupted run, plus 1 if the
  metrics (without wall-clock fields) differ (target 0).

    python bench/crash.py              # 20 kills
    python bench/crash.py --quick      # 3 kills
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from emomoe.train.metrics import TIMING_KEYS, read_metrics

STORE = Path(__file__).resolve().parents[1] / "tests" / "assets" / "store"
RESUMED = re.compile(r"resuming from (\S+) \(step (\d+)\)")
STEP_DIR = re.compile(r"^step-(\d{8})$")


def run_config(max_steps: int) -> dict:
    return {
        "model": {"preset": "tiny", "vocab_size": 512},
        "data": {"store": str(STORE), "seq_len": 64, "batch_size": 4},
        "train": {
            "max_steps": max_steps, "warmup_steps": 10, "checkpoint_every": 5, "num_checkpoints_kept": 2,
            "eval_every": 0, "num_eval_windows": 2, "log_every": 5, "tensorboard": False, "num_threads": 1,
        },
    }


def start(config: Path, run_dir: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "emomoe", "train", "--config", str(config), "--out", str(run_dir),
               "--resume", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def intact(step_dir: Path) -> bool:
    """Whether every file listed in step_dir/checksums.sha256 has the listed sha256 (read independently)."""
    for line in (step_dir / "checksums.sha256").read_text().splitlines():
        digest, _, name = line.partition("  ")
        file = step_dir / name
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            return False
    return True


def inspect(run_dir: Path) -> tuple[int | None, int, set[str]]:
    """(newest intact step, torn checkpoints, names of leftover temporaries) of a run directory."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None, 0, set()
    newest, torn = None, 0
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / "checksums.sha256").is_file():
            if intact(child):
                newest = max(newest or 0, int(match.group(1)))
            else:
                torn += 1
    temporaries = {child.name for child in root.iterdir() if child.name.endswith(".tmp")}
    return newest, torn, temporaries


def kill_during_checkpoint(process: subprocess.Popen, run_dir: Path, nth: int, timeout: float) -> bool:
    """SIGKILL as soon as the `nth` new checkpoint directory starts being written; False if the run ended first."""
    root = run_dir / "checkpoints"
    deadline = time.monotonic() + timeout
    seen: set[str] = set(os.listdir(root)) if root.is_dir() else set()
    while process.poll() is None and time.monotonic() < deadline:
        try:
            writing = {n for n in os.listdir(root) if n.startswith(".step-") and not n.endswith(".deleting.tmp")}
        except FileNotFoundError:
            writing = set()
        if writing - seen:
            nth -= 1
            seen |= writing
            if nth == 0:
                process.send_signal(signal.SIGKILL)
                return True
        time.sleep(0.0005)
    return False



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 kills, 60 steps")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (printed in the JSON)")
    args = parser.parse_args()
    if args.quick:
        args.kills, args.steps = 3, 60
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="emomoe-crash-"))
    config = work / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(args.steps)))
    started = time.perf_counter()

    reference = start(config, work / "reference")
    _, err = reference.communicate()
    if reference.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed:\n{err}")
    run_seconds = time.perf_counter() - started

    step_seconds = read_metrics(work / "reference" / "metrics.jsonl")[-1]["elapsed_s"] / args.steps
    startup = run_seconds - args.steps * step_seconds  # imports, data and model set-up
    run_dir = work / "crashed"
    kills = mid_checkpoint = resumes = from_newest = torn = 0
    expected_resume: int | None = None
    temporaries: set[str] = set()
    finished = False
    while not finished:
        process = start(config, run_dir)
        if kills == args.kills:
            killed = False  # the last round runs to the end
        elif kills % 2 == 0:
            killed = kill_during_checkpoint(process, run_dir, rng.randint(1, 2), timeout=run_seconds)
        else:
            remaining = args.steps - (expected_resume or 0)
            time.sleep(rng.uniform(0.1, startup + min(remaining, 40) * step_seconds))
            killed = process.poll() is None
            if killed:
                process.send_signal(signal.SIGKILL)
        _, err = process.communicate()
        resumed = RESUMED.search(err)
        if resumed:
            resumes += 1
            from_newest += int(resumed.group(2)) == expected_resume
        if not killed:
            if process.returncode != 0:
                raise SystemExit(f"a resumed run failed:\n{err}")
            finished = True
        kills += killed
        before = temporaries
        expected_resume, torn_now, temporaries = inspect(run_dir)
        torn += torn_now
        mid_checkpoint += bool(temporaries - before)  # this kill left a half-written checkpoint behind

    a, b = load_file(str(work / "reference" / "final" / "model.safetensors")), load_file(str(run_dir / "final" / "model.safetensors"))
    mismatches = sum(1 for k in a if k not in b or not torch.equal(a[k], b[k])) + len(set(b) - set(a))

    def metrics(path: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(path / "metrics.jsonl")]

    mismatches += metrics(work / "reference") != metrics(run_dir)
    result = {
        "kills": kills, "killed_mid_checkpoint": mid_checkpoint, "resumes": resumes,
        "resumes_from_newest_intact": from_newest, "torn_checkpoints": torn, "mismatches": mismatches,
        "bitwise_equal": mismatches == 0, "steps": args.steps, "seconds": round(time.perf_counter() - started, 1),
    }
    if args.keep:
        result["work_dir"] = str(work)
    else:
        shutil.rmtree(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
