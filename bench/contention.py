"""Training throughput on a machine shared with another busy process, as a fraction of idle.

Runs the real trainer (`emomoe.train.trainer.train`, the `small` preset at the demo's 16 x 256
batch, on a synthetic token store) in four situations, interleaved and repeated:
- idle or busy: busy keeps one core spinning in a child process for the whole run;
- adaptive (`train.num_threads: 0`, the default: one thread per core left free, re-decided every
  second) or fixed (`train.num_threads` = all cores, the old default).
Tokens/s counts wall time between the first and last measured steps (metrics' `elapsed_s`), so
waits between steps count too. Prints one JSON object; the targets are
`busy_adaptive_over_idle_adaptive_tokens_per_s` >= 0.4 and
`idle_adaptive_over_idle_fixed_tokens_per_s` >= 0.95.

    python bench/contention.py            # 30 steps per run, 2 repetitions
    python bench/contention.py --quick    # tiny preset, a few steps
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import TOKENS_PER_S, ratio  # bench/ is the script's folder, so it is on sys.path

from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer
from emomoe.train.config import RunConfig
from emomoe.train.metrics import read_metrics
from emomoe.train.runtime import available_cores
from emomoe.train.trainer import train

WARMUP_STEPS = 3


def synthetic_store(out: Path, num_docs: int = 400) -> Path:
    """Random-word documents in two domains: enough distinct windows for a few hundred steps."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(2000)]
    docs = [
        {"text": " ".join(rng.choice(words) for _ in range(rng.randint(100, 1500))), "domain": f"d{i % 2}",
         "source": f"synthetic/{i}"}
        for i in range(num_docs)
    ]
    tokenizer = train_tokenizer((d["text"] for d in docs), vocab_size=4096)
    tokenize_corpus(docs, tokenizer, out, progress=False)
    return out


def run_tokens_per_s(store: Path, out: Path, model: dict, steps: int, threads: int, batch: tuple[int, int]) -> float:
    cfg = RunConfig.from_dict({
        "model": model,
        "data": {"store": str(store), "batch_size": batch[0], "seq_len": batch[1]},
        "train": {"max_steps": steps, "warmup_steps": 1, "num_threads": threads, "peak_flops": None,
                  "tensorboard": False, "log_every": 1000, "num_eval_windows": 1, "eval_batch_size": 1},
    })
    train(cfg, out, progress=False, force=True)
    records = read_metrics(out / "metrics.jsonl")
    first, last = records[WARMUP_STEPS - 1], records[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])


class BusyCore:
    """A child process that keeps one core busy while the context is open."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset, 6 steps, one repetition")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    model, batch = {"preset": "small"}, (16, 256)
    if args.quick:  # the tiny preset's 256-token vocabulary is too small for the store's tokenizer
        model, batch, args.steps, args.reps = {"preset": "tiny", "vocab_size": 4096}, (4, 128), WARMUP_STEPS + 3, 1
    cores = available_cores()
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "store")
        for _ in range(args.reps):
            for load in ("idle", "busy"):
                for policy, threads in (("fixed", cores), ("adaptive", 0)):
                    name = f"{load}_{policy}"
                    if load == "busy":
                        with BusyCore():
                            tps = run_tokens_per_s(store, Path(tmp) / name, model, args.steps, threads, batch)
                    else:
                        tps = run_tokens_per_s(store, Path(tmp) / name, model, args.steps, threads, batch)
                    best[name] = max(best.get(name, 0.0), tps)
    print(json.dumps({
        "model": model, "batch": list(batch), "cores": cores, "steps": args.steps, "reps": args.reps,
        "tokens_per_s": {k: round(v) for k, v in best.items()},
        **ratio(best, "busy_adaptive", "idle_adaptive", TOKENS_PER_S),
        **ratio(best, "busy_fixed", "idle_fixed", TOKENS_PER_S),
        **ratio(best, "idle_adaptive", "idle_fixed", TOKENS_PER_S),
    }))


if __name__ == "__main__":
    main()
