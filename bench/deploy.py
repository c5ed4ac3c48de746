"""Deploying a subset: batch-1 greedy decoding against this machine's memory-bandwidth limit.

Decoding one token must read every weight it uses once: attention, norms, the router, the shared
expert and the top-k routed experts of every layer, the whole LM head and one embedding row. So
tokens/s can be at most the machine's read bandwidth over those bytes (`limit_tokens_per_s`),
and `share_of_limit` is how much of it we reach. Rows:

- `small`: the demo architecture (random weights) in fp32 and in bf16;
- `subset`: the 25% subset of the emo-1b14b topology that `bench/big_select.py` selects (16 layers,
  32 routed + 1 shared experts of hidden 1024, d_model 2048, vocab 100352), written directly with
  that shape and big_select's synthetic bf16 weights (~8 GB on disk; deleted afterwards). Its fp32
  weights do not fit in half the memory, so only bf16 runs.

Every row runs in its own process (so its peak RSS is its own; the checkpoint is loaded by
`load_for_inference`, as `emomoe generate` does): a 64-token prompt, then `new_tokens` greedy
tokens through `emomoe.generate.stream`, best of `reps` after a warm-up. `ttft_s` is the prompt's
forward plus the first token, `decode_tokens_per_s` the tokens after it. The read bandwidth is
probed (the fastest of several reads of an array far larger than the caches, on as many threads
as the decoding) in this process between the rows, and each row is divided by the better of the probes
before and after it. `load_average` before and after says whether other jobs shared the machine.

    python bench/deploy.py --quick     # `small` and a scaled-down subset, seconds
    python bench/deploy.py             # the real subset: ~8 GB of disk, a few minutes

Section 2 of issue 21 adds int8/int4 rows (a quantized checkpoint of the same model, decoded the
same way) and section 3 the same subset as GGUF in llama.cpp at f16/q8_0/q4_k, interleaved with
these rows: each is one more entry of `variants`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from emomoe import kernels
from emomoe.checkpoint import load_for_inference, save_model
from emomoe.checkpoint.models import available_memory
from emomoe.generate import GenerationConfig, stream
from emomoe.model import ModelConfig, build_model

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from big_select import build_store, dir_bytes, model_config, run_step, write_checkpoint  # noqa: E402

GB = 10**9
PROMPT_TOKENS = 64
TARGETS = {"subset_bf16_share_of_limit": 0.5, "subset_bf16_rss_above_disk_bytes": 1.5 * GB}
AVX2_ONLY = {
    kernels.CFLAGS_ENV: "-mno-avx512f", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
"""What a CPU without AVX-512 or bf16 instructions (an AMD EPYC of the AVX2 kind) runs: our kernels
built for AVX2, and torch, MKL and oneDNN held to AVX2. The `subset_bf16_avx2` row, on AVX-512 hosts."""
SUBSET_EXPERTS = 33
"""What `select --keep 0.25` keeps of emo-1b14b's 127 routed + 1 shared experts: 32 + 1."""


def bytes_per_token(cfg: ModelConfig, itemsize: int) -> int:
    """Weight bytes one decoded token reads: the active parameters without the embedding tables,
    plus the whole LM head and one embedding row."""
    _, active_body = cfg.num_params(embeddings=False)
    return (active_body + cfg.vocab_size * cfg.d_model + cfg.d_model) * itemsize


def read_bandwidth(num_bytes: int, reps: int) -> float:
    """Bytes/s of the fastest of `reps` reads of a float32 array of `num_bytes`, each read a sum or a
    matrix-vector product (BLAS's gemv read 15-20% faster than torch's sum on the Xeon)."""
    x = torch.ones(num_bytes // 4)
    ones = torch.ones(1, 4096)
    readers = (x.sum, lambda: torch.nn.functional.linear(ones, x.view(-1, 4096)))
    best = float("inf")
    for _ in range(reps):
        for read in readers:
            start = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - start)
    return num_bytes / best


def measure_decode(checkpoint: str, dtype: str, new_tokens: int, reps: int, threads: int, out: str) -> None:
    """One row, in its own process: load, warm up, then the best of `reps` generations; writes JSON to `out`."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    model, cfg = load_for_inference(checkpoint, dtype=torch.float32 if dtype == "fp32" else dtype)
    prompt_S = torch.randint(0, cfg.vocab_size, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0))
    if cfg.eos_id is not None:  # one document, as a user's prompt
        prompt_S[prompt_S == cfg.eos_id] = (cfg.eos_id + 1) % cfg.vocab_size
    prompt = prompt_S.tolist()
    settings = GenerationConfig(max_new_tokens=new_tokens, greedy=True)
    ttft, rate = float("inf"), 0.0
    for rep in range(reps + 1):
        start = time.perf_counter()
        stamps = [time.perf_counter() for _ in stream(model, [prompt], settings)]  # eos_id None: never stops early
        if rep:  # the first generation is the warm-up
            ttft = min(ttft, stamps[0] - start)
            rate = max(rate, (len(stamps) - 1) / (stamps[-1] - stamps[0]))
    weight_dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    Path(out).write_text(json.dumps({
        "ttft_s": ttft, "decode_tokens_per_s": rate, "weight_dtypes": weight_dtypes,
        "kernels_isa": kernels.ops().vector_isa() if kernels.ops() is not None else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }))


def run_variant(work: Path, name: str, checkpoint: Path, dtype: str, env: dict, args: argparse.Namespace) -> dict:
    out = work / f"{name}.json"
    saved = dict(os.environ)
    os.environ.update(env)  # the child inherits it
    try:
        step = run_step(
            f"import sys\nsys.path.insert(0, {str(BENCH)!r})\nfrom deploy import measure_decode\n"
            f"measure_decode({str(checkpoint)!r}, {dtype!r}, {args.new_tokens}, {args.reps}, {args.threads}, {str(out)!r})"
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {**json.loads(out.read_text()), "peak_rss_bytes": step["peak_rss_bytes"]}


def write_subset(work: Path, quick: bool) -> tuple[Path, ModelConfig]:
    """The subset's shape with big_select's synthetic weights (domain-leaning gates, so routing
    depends on the text), written as select would write it: bf16, model.yaml, checksums."""
    store_dir = work / "store"
    build_store(store_dir, vocab_size=1024 if quick else 4096, num_docs=40 if quick else 200)
    cfg = model_config(quick).with_overrides(
        [f"moe.num_experts={SUBSET_EXPERTS}", "moe.router.pool=off", "moe.router.eval_pool=off"]
    )
    write_checkpoint(work / "subset", store_dir, cfg, shard_bytes=2 * GB)
    return work / "subset", cfg


def write_small(work: Path) -> tuple[Path, Path, ModelConfig]:
    """The `small` demo model with random weights, saved in fp32 and in bf16."""
    cfg = ModelConfig.preset("small")
    torch.manual_seed(0)
    model = build_model(cfg)
    fp32 = save_model(work / "small-fp32", model, cfg)
    return fp32, save_model(work / "small-bf16", model.bfloat16(), cfg), cfg


def row(result: dict, cfg: ModelConfig, itemsize: int, bandwidth: float, disk_bytes: int) -> dict:
    per_token = bytes_per_token(cfg, itemsize)
    limit = bandwidth / per_token
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        "bytes_per_token": per_token,
        "read_bandwidth_bytes_per_s": round(bandwidth),
        "limit_tokens_per_s": round(limit, 3),
        "share_of_limit": round(result["decode_tokens_per_s"] / limit, 3),
        "disk_bytes": disk_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down subset, 8 new tokens, 1 repetition")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary checkpoints go")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.reps = 8, 1
    torch.set_num_threads(args.threads)
    probe_bytes, probe_reps = (2**30, 3) if args.quick else (2 * 2**30, 10)
    work = Path(tempfile.mkdtemp(prefix="deploy.", dir=args.dir))
    try:
        load_before = os.getloadavg()
        small_fp32, small_bf16, small_cfg = write_small(work)
        subset, subset_cfg = write_subset(work, args.quick)
        subset_fp32_bytes = subset_cfg.num_params()[0] * 4
        # (name, checkpoint, load dtype, its config, bytes per weight, environment)
        variants = [
            ("small_fp32", small_fp32, "fp32", small_cfg, 4, {}),
            ("small_bf16", small_bf16, "stored", small_cfg, 2, {}),
            ("subset_bf16", subset, "stored", subset_cfg, 2, {}),  # what "auto" loads at full size
        ]
        if "avx512f" in kernels.cpu_summary().split():
            variants.append(("subset_bf16_avx2", subset, "stored", subset_cfg, 2, AVX2_ONLY))
        if subset_fp32_bytes <= available_memory() // 2:
            variants.append(("subset_fp32", subset, "fp32", subset_cfg, 4, {}))
        probes = [read_bandwidth(probe_bytes, probe_reps)]
        rows = {}
        for name, checkpoint, dtype, cfg, itemsize, env in variants:
            result = run_variant(work, name, checkpoint, dtype, env, args)
            probes.append(read_bandwidth(probe_bytes, probe_reps))
            rows[name] = row(result, cfg, itemsize, max(probes[-2:]), dir_bytes(checkpoint))
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    subset_row = rows["subset_bf16"]
    print(json.dumps({
        "cpu": kernels.cpu_summary(),
        "threads": args.threads,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": args.new_tokens,
        "subset": ("scaled down (--quick)" if args.quick else "25% of emo-1b14b")
        + f": {subset_cfg.num_layers} layers x {SUBSET_EXPERTS} experts, d_model {subset_cfg.d_model}",
        "read_bandwidth_probes_bytes_per_s": [round(p) for p in probes],
        "rows": rows,
        "subset_fp32": "runs" if "subset_fp32" in rows else
        f"skipped: fp32 weights ({subset_fp32_bytes / GB:.1f} GB) exceed half the available memory",
        "targets_met": {
            "subset_bf16_share_of_limit": subset_row["share_of_limit"] >= TARGETS["subset_bf16_share_of_limit"],
            "subset_bf16_peak_rss": subset_row["peak_rss_bytes"]
            <= subset_row["disk_bytes"] + TARGETS["subset_bf16_rss_above_disk_bytes"],
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }))


if __name__ == "__main__":
    main()
