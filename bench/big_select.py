"""Selecting a 25% subset out of a checkpoint of the released 14B size, on a 24 GB laptop.

Writes a synthetic bf16 checkpoint with exactly the emo-1b14b topology (16 layers x 128 experts,
127 routed + 1 shared, d_model 2048, expert hidden 1024, vocab 100352; 13.6B parameters, ~27 GB)
in shards, then runs `emomoe select --keep 0.25` on ~2k calibration tokens, and `emomoe eval`,
`generate` (8 tokens) and `analyze` on the subset, each step in its own process so its peak RSS is
its own. Prints one JSON object: bytes on disk, peak RSS and wall time of every step, free disk
before writing, and the targets (select peak RSS <= 4 GB, select wall <= 5 min, subset <= non-expert
bytes + 26% of expert bytes).

The routing is not degenerate: token ids belong to synthetic domains (the documents of a small
token store), each domain has a random direction in the embedding, and each routed expert's gate
row leans towards one domain's direction. So documents of different domains prefer different
experts; `kept_in_domain` reports, per MoE layer, the fraction of kept experts that lean towards
the calibration domain (1/num_domains would mean routing ignores the text).

    python bench/big_select.py --quick          # a scaled-down model, seconds
    python bench/big_select.py                  # the real size: ~40 GB of disk, several minutes

Files go to a temporary directory beside --dir (default: the system temp dir) and are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from emomoe.checkpoint import CONFIG_FILE, CheckpointReader, ShardedWriter
from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer
from emomoe.hf.config_json import emo_config_json
from emomoe.hf.layouts import EMO, tensor_keys
from emomoe.io import write_checksums
from emomoe.model import ModelConfig, build_model

DOMAINS = ["alpha", "beta", "gamma", "delta"]
CALIB_DOMAIN = DOMAINS[0]
GB = 10**9
TARGETS = {"select_peak_rss_bytes": 4 * GB, "select_wall_s": 300.0, "subset_expert_fraction": 0.26}


def model_config(quick: bool, num_layers: int | None = None) -> ModelConfig:
    cfg = ModelConfig.preset("emo-1b14b")
    if num_layers:
        cfg = cfg.with_overrides([f"num_layers={num_layers}"])
    if quick:
        cfg = cfg.with_overrides([
            f"num_layers={num_layers or 4}", "d_model=128", "num_heads=4", "moe.expert_hidden_size=64",
            "vocab_size=8192", "eos_id=0",
        ])
    # The store's tokenizer has EOS at id 0; calibration and eval windows are 256 tokens.
    return cfg.with_overrides(["eos_id=0", "max_seq_len=1024"])


def build_store(out: Path, vocab_size: int, num_docs: int) -> TokenStore:
    """Documents of made-up words, a disjoint vocabulary per domain, so BPE tokens belong to one domain."""
    rng = random.Random(0)
    docs = []
    for domain in DOMAINS:
        words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9))) for _ in range(400)]
        for i in range(num_docs):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(150, 400)))
            docs.append({"text": text, "domain": domain, "source": f"synthetic:{domain}/{i}"})
    tokenizer = train_tokenizer((d["text"] for d in docs), vocab_size=vocab_size)
    tokenizer.save(out.parent / "tokenizer")
    return tokenize_corpus(docs, tokenizer, out, val_fraction=0.2, progress=False)


def token_domains(store: TokenStore) -> dict[int, int]:
    """Token id -> index of the domain it occurs in most."""
    counts: dict[int, list[int]] = {}
    for d, domain in enumerate(DOMAINS):
        for _, tokens in store.documents(Split.TRAIN, [domain]):
            for t in tokens.tolist():
                counts.setdefault(t, [0] * len(DOMAINS))[d] += 1
    return {t: max(range(len(DOMAINS)), key=c.__getitem__) for t, c in counts.items()}


def synthetic_tensor(name: str, shape: tuple[int, ...], directions_GD: torch.Tensor, domain_of: dict[int, int],
                     gen: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    t = torch.empty(shape).normal_(0.0, 0.02, generator=gen)
    if name == "embed.weight":
        t.mul_(25.0)  # rms 0.5 noise, plus the token's domain direction (rms 1)
        ids = torch.tensor(list(domain_of))
        t[ids] += directions_GD[torch.tensor(list(domain_of.values()))]
    elif name.endswith("router.gate.weight"):
        # Routed expert e leans towards domain e mod G: a logit bonus of ~4 for that domain's tokens.
        d_model = shape[1]
        lean_ED = directions_GD[torch.arange(shape[0]) % len(directions_GD)] * (0.1 / d_model**0.5)
        t += lean_ED
    return t.bfloat16()


def write_checkpoint(out: Path, store_dir: Path, cfg: ModelConfig, shard_bytes: int, fmt: str = "emomoe") -> None:
    """Our format (model.yaml, our names, checksums.sha256 as save_model writes them), or the
    Hugging Face EMO layout (config.json, one matrix per expert, no checksums) written directly, so
    the files are those a released model would have."""
    store = TokenStore.open(store_dir)
    gen = torch.Generator().manual_seed(0)
    directions_GD = torch.randn(len(DOMAINS), cfg.d_model, generator=gen)
    domain_of = token_domains(store)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in build_model(cfg).state_dict().items()}
    hf_keys = tensor_keys(cfg, EMO) if fmt == "hf" else {name: name for name in shapes}
    out.mkdir()
    with ShardedWriter(out, shard_bytes) as writer:
        for name, shape in shapes.items():
            tensor, keys = synthetic_tensor(name, shape, directions_GD, domain_of, gen), hf_keys[name]
            for key, part in [(keys, tensor)] if isinstance(keys, str) else zip(keys, tensor):
                writer.add(key, part)
    if fmt == "hf":
        config = emo_config_json(cfg, eos_id=0, pad_id=0, dtype="bfloat16")
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    else:
        cfg.to_yaml(out / CONFIG_FILE)
        # As save_model does: select then verifies every shard before it reads one.
        write_checksums(out)


def run_step(code: str) -> dict:
    """Run Python `code` in its own process: wall seconds and that process's own peak RSS.

    The peak is VmHWM, that of the process's own address space: getrusage's ru_maxrss survives
    exec, so a child of a big parent (a bench holding a bandwidth probe) reported the parent's."""
    wrapper = (
        f"import json, pathlib\n{code}\n"
        "hwm = [l for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')]\n"
        "print(json.dumps({'peak_rss_bytes': int(hwm[0].split()[1]) * 1024}))"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"step failed:\n{code}\n{proc.stderr[-3000:]}")
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_bytes"]
    return {"wall_s": round(wall, 1), "peak_rss_bytes": peak}


def _cli(*args: str) -> str:
    return f"from emomoe.cli import main\nassert main({list(args)!r}) == 0"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def planned_bytes(cfg: ModelConfig, keep_fraction: float) -> tuple[int, int]:
    """(checkpoint, subset) tensor bytes in bf16."""
    expert = 3 * cfg.d_model * cfg.moe.expert_hidden_size * 2
    total = cfg.num_params()[0] * 2
    routed = cfg.moe.num_experts - cfg.moe.router.num_shared_experts
    kept = max(1, int(keep_fraction * routed + 0.5)) + cfg.moe.router.num_shared_experts
    return total, total - cfg.num_layers * (cfg.moe.num_experts - kept) * expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down model (4 layers x 128 experts, d 128)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary files go")
    parser.add_argument("--shard-bytes", type=float, default=2e9, help="checkpoint shard size (HF releases: 5e9)")
    parser.add_argument("--keep", default="0.25")
    parser.add_argument("--layers", type=int, help="fewer layers than the real 16 (a partial-size run)")
    parser.add_argument("--format", choices=["emomoe", "hf"], default="emomoe",
                        help="write the checkpoint in our format or as a Hugging Face EMO directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="big_select.", dir=args.dir))
    try:
        result = run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def run(work: Path, args: argparse.Namespace) -> dict:
    store_dir, full, sub = work / "store", work / "full", work / "sub"
    store = build_store(store_dir, vocab_size=1024 if args.quick else 4096, num_docs=40 if args.quick else 200)
    cfg = model_config(args.quick, args.layers)
    checkpoint_planned, subset_planned = planned_bytes(cfg, float(args.keep))
    free = shutil.disk_usage(work).free
    needed = checkpoint_planned + subset_planned + GB // 2
    if free < needed:
        raise SystemExit(f"{work}: {needed / GB:.1f} GB of free disk needed, {free / GB:.1f} GB free")
    load_before = os.getloadavg()
    write = run_step(
        f"import sys\nfrom pathlib import Path\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        f"from big_select import model_config, write_checkpoint\n"
        f"write_checkpoint(Path({str(full)!r}), Path({str(store_dir)!r}), model_config({args.quick}, {args.layers}), "
        f"{int(args.shard_bytes)}, {args.format!r})"
    )
    windows = ["--seq-len", "256", "--batch-size", "8"]
    # Without the router profile, which costs layerwise one more pass over every expert: the step
    # measures the selection itself, as it did before selections recorded one.
    select = run_step(_cli("select", "--checkpoint", str(full), "--data", str(store_dir), "--calib", CALIB_DOMAIN,
                           "--keep", args.keep, "--num-calib-windows", "8", *windows, "--out", str(sub),
                           "--no-router-profile", "--no-progress"))
    evaluate = run_step(_cli("eval", "--checkpoint", str(sub), "--data", str(store_dir), "--domains", CALIB_DOMAIN,
                             "--num-eval-windows", "8", *windows, "--out", str(work / "eval.json"), "--no-progress"))
    # The subset's weights stay bf16 (float32 ones would not fit in half the memory at full size)
    # and each module computes in float32.
    generate = run_step(_cli("generate", "--checkpoint", str(sub), "--tokenizer", str(work / "tokenizer"), "--prompt",
                             "the", "--max-new-tokens", "8", "--greedy"))
    analyze = run_step(_cli("analyze", "--checkpoints", str(sub), "--data", str(store_dir), "--num-docs", "4",
                            "--clusters.num-clusters", "4", "--out", str(work / "analysis"), "--no-progress"))
    with CheckpointReader(full) as reader:
        expert = sum(_nbytes(reader, n) for n in reader.names() if ".moe.experts." in n)
        non_expert = sum(_nbytes(reader, n) for n in reader.names() if ".moe.experts." not in n)
    record = json.loads((sub / "selection.json").read_text())
    domain = DOMAINS.index(CALIB_DOMAIN)
    kept_in_domain = [round(sum(e % len(DOMAINS) == domain for e in k) / len(k), 2) for k in record["kept_experts"]]
    subset_bytes, limit = dir_bytes(sub), non_expert + TARGETS["subset_expert_fraction"] * expert
    return {
        "model": ("scaled down (--quick)" if args.quick else "emo-1b14b topology")
        + f", {cfg.num_layers} layers x {cfg.moe.num_experts} experts, synthetic bf16",
        "format": args.format,
        "num_params": cfg.num_params()[0],
        "free_disk_bytes_before": free,
        "disk_bytes_needed": needed,
        "checkpoint_bytes": dir_bytes(full),
        "checkpoint_shards": len(list(full.glob("*.safetensors"))),
        "checkpoint_expert_bytes": expert,
        "checkpoint_non_expert_bytes": non_expert,
        "subset_bytes": subset_bytes,
        "subset_bytes_limit": int(limit),
        "calibration_tokens": record["calibration"]["num_tokens"],
        "steps": {"write": write, "select": select, "eval": evaluate, "generate": generate, "analyze": analyze},
        "eval_loss": json.loads((work / "eval.json").read_text())["all"]["loss"],
        "kept_in_domain": kept_in_domain,
        "targets_met": {
            "select_peak_rss": select["peak_rss_bytes"] <= TARGETS["select_peak_rss_bytes"],
            "select_wall": select["wall_s"] <= TARGETS["select_wall_s"],
            "subset_size": subset_bytes <= limit,
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
    }


def _nbytes(reader: CheckpointReader, name: str) -> int:
    return torch.Size(reader.shape(name)).numel() * reader.dtype(name).itemsize


if __name__ == "__main__":
    main()
