"""Deploying a subset: batch-1 greedy decoding against this machine's memory-bandwidth limit.

Decoding one token must read every weight it uses once: attention, norms, the router, the shared
expert and the top-k routed experts of every layer, the whole LM head and one embedding row. So
tokens/s can be at most the machine's read bandwidth over those bytes (`limit_tokens_per_s`),
and `share_of_limit` is how much of it we reach. The bytes are counted from the files, as stored
(integers and their scales for int8/int4 and the GGUF types). Rows:

- `small_*`: the demo architecture (random weights) in fp32, bf16, int8 and int4;
- `subset_*`: the 25% subset of the emo-1b14b topology that `bench/big_select.py` selects (16
  layers, 32 routed + 1 shared experts of hidden 1024, d_model 2048, vocab 100352), written
  directly with that shape and big_select's synthetic bf16 weights (~8 GB on disk), then
  quantized by `emomoe quantize` to int8 (groups of 128) and int4 (groups of 32). Its fp32
  weights do not fit in half the memory, so fp32 is skipped. `subset_bf16_avx2` runs our bf16
  kernels built for AVX2 (on AVX-512 hosts).
- `llama_cpp_*`: the same subset exported by `emomoe export gguf` at f16, q8_0 and q4_k, decoded by
  llama.cpp (llama-cpp-python, the `gguf` extra) with as many threads, interleaved with ours.

Every row runs in its own process (so its peak RSS is its own; our checkpoints load through
`load_for_inference`, as `emomoe generate` does): a 64-token prompt, then `new_tokens` greedy
tokens, best of `reps` after a warm-up. `ttft_s` is the prompt's forward plus the first token,
`decode_tokens_per_s` the tokens after it. The read bandwidth is probed (the fastest of several
reads of an array far larger than the caches, on as many threads as the decoding) in this process
between the rows, and each row is divided by the better of the probes before and after it.
`load_average` before and after says whether other jobs shared the machine. Ratios between rows
of one run (`ratios`) are what to compare across machines; all files are deleted at the end.

    python bench/deploy.py --quick     # `small` and a scaled-down subset, about a minute
    python bench/deploy.py             # the real subset: ~35 GB of disk at the peak, ~25 minutes
    python bench/deploy.py --rows 'subset_bf16,subset_int8,llama_cpp_q8_0'   # some rows (globs)
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from emomoe import kernels
from emomoe.checkpoint import CheckpointReader, load_for_inference, save_model
from emomoe.checkpoint.models import available_memory
from emomoe.data.store import TokenStore
from emomoe.deploy.quantize import quantize_checkpoint
from emomoe.generate import GenerationConfig, stream
from emomoe.model import ModelConfig, build_model

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from big_select import build_store, dir_bytes, model_config, run_step, write_checkpoint  # noqa: E402
from timing import TOKENS_PER_S, ratio  # noqa: E402

GB = 10**9
PROMPT_TOKENS = 64
TARGETS = {
    "subset_bf16_share_of_limit": 0.5, "subset_bf16_rss_above_disk_bytes": 1.5 * GB,
    "subset_int8_share_of_limit": 0.5, "subset_int8_speedup_vs_bf16": 1.6,
}
AVX2_ONLY = {
    kernels.CFLAGS_ENV: "-mno-avx512f", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
"""What a CPU without AVX-512 or bf16 instructions (an AMD EPYC of the AVX2 kind) runs: our kernels
built for AVX2, and torch, MKL and oneDNN held to AVX2. The `subset_bf16_avx2` row, on AVX-512 hosts."""
SUBSET_EXPERTS = 33
"""What `select --keep 0.25` keeps of emo-1b14b's 127 routed + 1 shared experts: 32 + 1."""


def used_fraction(name: str, cfg: ModelConfig) -> float:
    """The share of a tensor (our name) that decoding one token reads: one embedding row, the
    top-k of a layer's routed experts and all of its shared ones, all of everything else."""
    if name == "embed.weight":
        return 1 / cfg.vocab_size
    if ".moe.experts." in name:
        layer = int(name.split(".")[1])
        used = cfg.moe.top_k_in_layer(layer) + cfg.moe.router.num_shared_experts
        return used / cfg.moe.experts_in_layer(layer)
    return 1.0


def bytes_per_token(checkpoint: Path, load_itemsize: int | None = None) -> int:
    """Weight bytes one decoded token reads from `checkpoint` as stored (or with its float tensors
    widened to `load_itemsize` bytes, for a bf16 checkpoint run in fp32)."""
    with CheckpointReader(checkpoint, verify=False) as reader:
        total = 0.0
        for name in reader.names():
            stored = reader.stored_bytes(name)
            if load_itemsize and not reader.is_quantized(name):
                stored = stored // reader.dtype(name).itemsize * load_itemsize
            total += stored * used_fraction(name, reader.config)
    return round(total)


def gguf_bytes_per_token(path: Path, cfg: ModelConfig) -> int:
    """The same count for a GGUF file, from its tensors' stored sizes (llama.cpp's names)."""
    from gguf import GGUFReader

    total = 0.0
    for tensor in GGUFReader(path).tensors:
        if tensor.name == "token_embd.weight":
            total += tensor.n_bytes / cfg.vocab_size
        elif "_exps." in tensor.name:  # the routed experts of a layer, stacked
            total += tensor.n_bytes * cfg.moe.top_k / (cfg.moe.num_experts - cfg.moe.router.num_shared_experts)
        else:
            total += tensor.n_bytes
    return round(total)


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


def measure_decode(checkpoint: str, dtype: str, prompt: list[int], new_tokens: int, reps: int, threads: int, out: str) -> None:
    """One row, in its own process: load, warm up, then the best of `reps` generations; writes JSON to `out`."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    model, _ = load_for_inference(checkpoint, dtype=torch.float32 if dtype == "fp32" else dtype)
    settings = GenerationConfig(max_new_tokens=new_tokens, greedy=True)
    ttft, rate = float("inf"), 0.0
    for rep in range(reps + 1):
        start = time.perf_counter()
        stamps = [time.perf_counter() for _ in stream(model, [prompt], settings)]  # eos_id None: never stops early
        if rep:  # the first generation is the warm-up
            ttft = min(ttft, stamps[0] - start)
            rate = max(rate, (len(stamps) - 1) / (stamps[-1] - stamps[0]))
    weight_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in model.state_dict().values()})
    Path(out).write_text(json.dumps({
        "ttft_s": ttft, "decode_tokens_per_s": rate, "weight_dtypes": weight_dtypes,
        "kernels_isa": kernels.ops().vector_isa() if kernels.ops() is not None else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }))


def measure_llama_cpp(path: str, prompt: list[int], new_tokens: int, reps: int, threads: int, out: str) -> None:
    """A `measure_decode` row for a GGUF file in llama.cpp: the same prompt, greedy (top-1)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path, n_ctx=PROMPT_TOKENS + new_tokens + 8, n_batch=PROMPT_TOKENS, n_threads=threads,
        n_threads_batch=threads, verbose=False,
    )
    ttft, rate = float("inf"), 0.0
    for rep in range(reps + 1):
        # Forget the previous generation: llama-cpp-python otherwise keeps the KV cache of the
        # prompt's longest common prefix, and the prompt would not be computed again.
        llm.reset()
        start = time.perf_counter()
        stamps = []
        for _ in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == new_tokens:
                break
        if rep:
            ttft = min(ttft, stamps[0] - start)
            rate = max(rate, (len(stamps) - 1) / (stamps[-1] - stamps[0]))
    Path(out).write_text(json.dumps({
        "ttft_s": ttft, "decode_tokens_per_s": rate, "runtime": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
    }))


def bench_prompt(vocab_size: int, eos_id: int | None) -> list[int]:
    """64 random token ids without EOS: one document, as a user's prompt."""
    prompt_S = torch.randint(0, vocab_size, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0))
    if eos_id is not None:
        prompt_S[prompt_S == eos_id] = (eos_id + 1) % vocab_size
    return prompt_S.tolist()


def run_variant(work: Path, name: str, call: str, env: dict) -> dict:
    """Run `call` (a function of this file, its output path still to add) in its own process."""
    out = work / f"{name}.json"
    saved = dict(os.environ)
    os.environ.update(env)  # the child inherits it
    try:
        step = run_step(
            f"import sys\nsys.path.insert(0, {str(BENCH)!r})\nimport deploy\n"
            f"deploy.{call[:-1]}, {str(out)!r})"
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {**json.loads(out.read_text()), "peak_rss_bytes": step["peak_rss_bytes"]}


def write_subset(work: Path, quick: bool) -> tuple[Path, ModelConfig, Path]:
    """The subset's shape with big_select's synthetic weights (domain-leaning gates, so routing
    depends on the text), written as select would write it: bf16, model.yaml, checksums. Also
    returns its tokenizer (the store's), which a GGUF file carries."""
    store_dir = work / "store"
    build_store(store_dir, vocab_size=1024 if quick else 4096, num_docs=40 if quick else 200)
    cfg = model_config(quick).with_overrides(
        [f"moe.num_experts={SUBSET_EXPERTS}", "moe.router.pool=off", "moe.router.eval_pool=off"]
    )
    write_checkpoint(work / "subset", store_dir, cfg, shard_bytes=2 * GB)
    return work / "subset", cfg, TokenStore.open(store_dir).tokenizer_path


def write_small(work: Path) -> tuple[Path, Path, ModelConfig]:
    """The `small` demo model with random weights, saved in fp32 and in bf16."""
    cfg = ModelConfig.preset("small")
    torch.manual_seed(0)
    model = build_model(cfg)
    fp32 = save_model(work / "small-fp32", model, cfg)
    return fp32, save_model(work / "small-bf16", model.bfloat16(), cfg), cfg


def row(result: dict, per_token: int, bandwidth: float, disk_bytes: int) -> dict:
    limit = bandwidth / per_token
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        "bytes_per_token": per_token,
        "read_bandwidth_bytes_per_s": round(bandwidth),
        "limit_tokens_per_s": round(limit, 3),
        "share_of_limit": round(result["decode_tokens_per_s"] / limit, 3),
        "disk_bytes": disk_bytes,
    }


@dataclasses.dataclass
class Variant:
    name: str
    call: str
    """A measure function of this file with its arguments, less the output path."""
    bytes_per_token: int
    disk_bytes: int
    env: dict = dataclasses.field(default_factory=dict)


def ours(name: str, checkpoint: Path, dtype: str, prompt: list[int], args, load_itemsize=None, env=None) -> Variant:
    call = f"measure_decode({str(checkpoint)!r}, {dtype!r}, {prompt}, {args.new_tokens}, {args.reps}, {args.threads})"
    return Variant(name, call, bytes_per_token(checkpoint, load_itemsize), dir_bytes(checkpoint), env or {})


def llama(name: str, path: Path, cfg: ModelConfig, prompt: list[int], args) -> Variant:
    call = f"measure_llama_cpp({str(path)!r}, {prompt}, {args.new_tokens}, {args.reps}, {args.threads})"
    return Variant(name, call, gguf_bytes_per_token(path, cfg), path.stat().st_size)


def has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


RATIOS = [
    ("subset_int8", "subset_bf16"), ("subset_int4", "subset_bf16"), ("subset_bf16", "llama_cpp_f16"),
    ("subset_int8", "llama_cpp_q8_0"), ("subset_int4", "llama_cpp_q4_k"),
]
"""Decode speeds compared within one run: quantized against bf16, and ours against llama.cpp's per bit width."""


def ratios(rows: dict) -> dict:
    speeds = {name: r["decode_tokens_per_s"] for name, r in rows.items()}
    return {k: v for a, b in RATIOS if a in speeds and b in speeds for k, v in ratio(speeds, a, b, TOKENS_PER_S).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down subset, 8 new tokens, 1 repetition")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary checkpoints go")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the GGUF rows")
    parser.add_argument("--rows", default="*", help="comma-separated globs of the rows to run (default: all)")
    args = parser.parse_args()
    patterns = args.rows.split(",")

    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    if args.quick:
        args.new_tokens, args.reps = 8, 1
    torch.set_num_threads(args.threads)
    probe_bytes, probe_reps = (2**30, 3) if args.quick else (2 * 2**30, 10)
    work = Path(tempfile.mkdtemp(prefix="deploy.", dir=args.dir))
    try:
        load_before = os.getloadavg()
        small_fp32, small_bf16, small_cfg = write_small(work)
        subset, subset_cfg, tokenizer = write_subset(work, args.quick)
        small_prompt = bench_prompt(small_cfg.vocab_size, small_cfg.eos_id)
        prompt = bench_prompt(subset_cfg.vocab_size, subset_cfg.eos_id)
        variants = [ours("small_fp32", small_fp32, "fp32", small_prompt, args),
                    ours("small_bf16", small_bf16, "stored", small_prompt, args)]
        for bits in (8, 4):
            if wanted(f"small_int{bits}"):
                quantize_checkpoint(small_fp32, work / f"small-int{bits}", bits=bits)
                variants.append(ours(f"small_int{bits}", work / f"small-int{bits}", "auto", small_prompt, args))
        variants.append(ours("subset_bf16", subset, "stored", prompt, args))  # what "auto" loads at full size
        if "avx512f" in kernels.cpu_summary().split():
            variants.append(ours("subset_bf16_avx2", subset, "stored", prompt, args, env=AVX2_ONLY))
        subset_fp32_bytes = subset_cfg.num_params()[0] * 4
        if subset_fp32_bytes <= available_memory() // 2:
            variants.append(ours("subset_fp32", subset, "fp32", prompt, args, load_itemsize=4))
        group_sizes = {}
        for bits in (8, 4):
            if wanted(f"subset_int{bits}"):
                record = quantize_checkpoint(subset, work / f"subset-int{bits}", bits=bits)
                group_sizes[f"int{bits}"] = record.group_size
                variants.append(ours(f"subset_int{bits}", work / f"subset-int{bits}", "auto", prompt, args))
        gguf_skipped = "--no-llama-cpp" if args.no_llama_cpp else None if has_llama_cpp() else "llama-cpp-python missing"
        if gguf_skipped is None:
            from emomoe.deploy.gguf import export_gguf

            for kind in ("f16", "q8_0", "q4_k"):
                if wanted(f"llama_cpp_{kind}"):
                    path = export_gguf(subset, work / f"subset-{kind}.gguf", type=kind, tokenizer=tokenizer)
                    variants.append(llama(f"llama_cpp_{kind}", path, subset_cfg, prompt, args))
        variants = [v for v in variants if wanted(v.name)]
        probes = [read_bandwidth(probe_bytes, probe_reps)]
        rows = {}
        for v in variants:
            result = run_variant(work, v.name, v.call, v.env)
            probes.append(read_bandwidth(probe_bytes, probe_reps))
            rows[v.name] = row(result, v.bytes_per_token, max(probes[-2:]), v.disk_bytes)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "cpu": kernels.cpu_summary(),
        "threads": args.threads,
        "prompt_tokens": PROMPT_TOKENS,
        "new_tokens": args.new_tokens,
        "subset": ("scaled down (--quick)" if args.quick else "25% of emo-1b14b")
        + f": {subset_cfg.num_layers} layers x {SUBSET_EXPERTS} experts, d_model {subset_cfg.d_model}",
        "group_sizes": group_sizes,
        "read_bandwidth_probes_bytes_per_s": [round(p) for p in probes],
        "rows": rows,
        "subset_fp32": "runs" if "subset_fp32" in rows else
        f"skipped: fp32 weights ({subset_fp32_bytes / GB:.1f} GB) exceed half the available memory",
        "llama_cpp": gguf_skipped or "runs",
        "ratios": ratios(rows),
        "targets_met": targets_met(rows),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }))


def targets_met(rows: dict) -> dict:
    """Each target whose rows ran: met or not."""
    bf16, int8 = rows.get("subset_bf16"), rows.get("subset_int8")
    met = {}
    if bf16:
        met["subset_bf16_share_of_limit"] = bf16["share_of_limit"] >= TARGETS["subset_bf16_share_of_limit"]
        met["subset_bf16_peak_rss"] = (
            bf16["peak_rss_bytes"] <= bf16["disk_bytes"] + TARGETS["subset_bf16_rss_above_disk_bytes"]
        )
    if int8:
        met["subset_int8_share_of_limit"] = int8["share_of_limit"] >= TARGETS["subset_int8_share_of_limit"]
    if bf16 and int8:
        met["subset_int8_speedup_vs_bf16"] = (
            int8["decode_tokens_per_s"] / bf16["decode_tokens_per_s"] >= TARGETS["subset_int8_speedup_vs_bf16"]
        )
    return met

if __name__ == "__main__":
    main()
