"""Training throughput of a model preset: EMO and the standard MoE measured side by side.

One step = `emomoe.train.step.train_step` (forward, loss, backward, clipping, AdamW: what
`emomoe train` runs), on random tokens packed as documents of about `--doc-len` tokens (so the EMO pool has documents to work on). A third timer runs the EMO
model with emomoe's fused CPU kernels off (`emomoe.kernels.disabled`): `kernels_speedup` is what
they bring. Prints one JSON object.

    python bench/train.py --preset small            # the demo model at the demo batch shape
    python bench/train.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time

import torch
from timing import TOKENS_PER_S, ratio  # bench/ is the script's folder, so it is on sys.path

from emomoe import kernels
from emomoe.model import build_model
from emomoe.model.config import ModelConfig
from emomoe.model.docs import doc_ids_from_eos
from emomoe.model.losses import compute_loss
from emomoe.train.config import TrainConfig
from emomoe.train.flops import matmul_flops_per_s, mfu, train_flops_per_token
from emomoe.train.optim import build_optimizer
from emomoe.train.runtime import setup_runtime
from emomoe.train.step import train_step

PEAK_SHAPE = (2048, 2048, 2048)


def random_batch(cfg: ModelConfig, batch_size: int, seq_len: int, doc_len: int, gen: torch.Generator):
    tokens_BS1 = torch.randint(1, cfg.vocab_size, (batch_size, seq_len + 1), generator=gen)
    tokens_BS1[:, doc_len::doc_len] = 0  # token 0 stands in for EOS
    input_ids_BS = tokens_BS1[:, :-1]
    return input_ids_BS, tokens_BS1[:, 1:], doc_ids_from_eos(input_ids_BS, eos_id=0)


class StepTimer:
    """One model with its optimizer and its own batch stream; `step()` returns its wall time."""

    def __init__(self, cfg: ModelConfig, batch_size: int, seq_len: int, doc_len: int, pytorch_ops: bool = False):
        torch.manual_seed(0)
        self.pytorch_ops = pytorch_ops
        self.cfg, self.shape = cfg, (batch_size, seq_len, doc_len)
        self.model = build_model(cfg)
        self.recipe = TrainConfig()
        self.optimizer = build_optimizer(self.model, self.recipe)
        self.loss_fn = functools.partial(compute_loss, loss_cfg=cfg.loss)
        self.gen = torch.Generator().manual_seed(0)

    def step(self) -> float:
        input_ids_BS, labels_BS, doc_ids_BS = random_batch(self.cfg, *self.shape, self.gen)
        batch = {"input_ids_BS": input_ids_BS, "labels_BS": labels_BS, "doc_ids_BS": doc_ids_BS}
        start = time.perf_counter()
        with kernels.disabled() if self.pytorch_ops else contextlib.nullcontext():
            train_step(self.model, self.optimizer, [batch], self.loss_fn, grad_clip=self.recipe.grad_clip)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--doc-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, a few steps")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.batch_size, args.seq_len, args.steps = "tiny", 4, 64, 5
    setup_runtime(args.threads, retain_memory=True)
    emo = ModelConfig.preset(args.preset)
    std = emo.with_overrides(["moe.router.pool=off"])
    if emo.moe.router.pool == "off":
        raise SystemExit(f"preset {args.preset} has no EMO pool to compare against")
    timers = {name: StepTimer(cfg, args.batch_size, args.seq_len, args.doc_len) for name, cfg in (("emo", emo), ("std", std))}
    timers["emo_pytorch_ops"] = StepTimer(emo, args.batch_size, args.seq_len, args.doc_len, pytorch_ops=True)
    elapsed = {name: 0.0 for name in timers}
    peak = 0.0
    # Steps alternate between the two models (and a peak-rate matmul, for MFU) so that all see the
    # same machine load.
    for step in range(args.steps + 2):
        for name, timer in timers.items():
            seconds = timer.step()
            if step >= 2:  # the first steps warm up allocators and caches
                elapsed[name] += seconds
        peak = max(peak, matmul_flops_per_s(*PEAK_SHAPE, seconds=0.0))
    emo_tps, std_tps, plain_tps = (
        args.steps * args.batch_size * args.seq_len / elapsed[name] for name in ("emo", "std", "emo_pytorch_ops")
    )
    flops_per_token = train_flops_per_token(emo, args.seq_len)
    print(json.dumps({
        "preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "threads": torch.get_num_threads(), "steps": args.steps,
        "emo_tokens_per_s": round(emo_tps), "std_tokens_per_s": round(std_tps),
        **ratio({"emo": emo_tps, "std": std_tps}, "emo", "std", TOKENS_PER_S),
        "emo_pytorch_ops_tokens_per_s": round(plain_tps), "kernels_speedup": round(emo_tps / plain_tps, 3),
        "peak_gflops": round(peak / 1e9, 1), "emo_mfu": round(mfu(flops_per_token, emo_tps, peak), 3),
    }))


if __name__ == "__main__":
    main()
