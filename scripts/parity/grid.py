"""Controlled runs for the EMO-vs-standard full-model gap (issue 11; write-up in docs/parity.md).

Each named run is a demo config plus dotted overrides. A run trains (resuming if interrupted),
then measures the full model's validation loss per domain on the whole validation split (the
demo's number: pool-free routing, as the HF model); with --sweep also the 25%-kept subsets' loss
increase per domain (the demo sweep's layerwise selection at one keep fraction). Results go to
OUT/<name>/parity.json, and every invocation rewrites OUT/results.md from all finished runs:
gaps and ratios are taken against the standard run with the same seed, budget, LR, warmup and
LB weight.

Runs are sequential, one at a time; training losses do not depend on machine load, so run it
in the background on a busy machine:

    OMP_WAIT_POLICY=PASSIVE nice -n 19 .venv/bin/python scripts/parity/grid.py \\
        --store runs/demo/store --out runs/parity std emo std-seed1
    .venv/bin/python scripts/parity/grid.py --store runs/demo/store --out runs/parity --sweep std emo
    .venv/bin/python scripts/parity/grid.py --store runs/demo/store --out runs/parity --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from emomoe.analyze.sweep_results import for_method, mean_increase, methods_of
from emomoe.checkpoint import load_model
from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.experiments.sweep import SweepConfig, run_sweep
from emomoe.io import atomic_write_text
from emomoe.tables import markdown_table
from emomoe.train.config import SHIPPED_CONFIGS, RunConfig
from emomoe.train.trainer import train
from emomoe.train.validation import loss_by_domain

KEEP = 0.25
EVAL_POOL_WINDOWS = 32
RESULT_FILE = "parity.json"
COMMON = [
    "train.num_threads=2", "train.checkpoint_every=50", "train.no_decay=embeddings_and_norms",
    "train.max_steps=500", "train.warmup_steps=30", "model.loss.lb_weight=0.1",
]
"""Two threads for every run (export OMP_WAIT_POLICY=PASSIVE on a busy machine: spinning OpenMP
threads are what makes a loaded machine slow); weight decay, budget, warmup and LB weight as the
demo configs had them in the first two rounds, so a run's name keeps its meaning when they change."""

STD, EMO = "demo-std.yaml", "demo-emo.yaml"
SEED1, SEED2 = "train.seed=1", "train.seed=2"
PAPER_POOL = "model.moe.router.pool=4..32"
"""The paper's U{8..128} scaled to 31 routed experts: the demo's pool when these runs were made
(demo-emo.yaml has U{4..40} since; the runs name their pool, so they stay what they were)."""
DEMO_POOL = "model.moe.router.pool=4..40"
RENORM = "model.moe.router.renormalize=true"
WARM100 = "train.warmup_steps=100"
LB001 = "model.loss.lb_weight=0.01"
POOL4_44 = "model.moe.router.pool=4..44"
WIN32 = "model.moe.router.lb_window=32"
GRID: dict[str, tuple[str, list[str]]] = {
    # name: (demo config, overrides). Standard runs are the references of the EMO runs with the
    # same seed and budget (see `reference_of`).
    "std": (STD, []),
    "emo": (EMO, [PAPER_POOL]),
    "std-seed1": (STD, [SEED1]),
    "emo-seed1": (EMO, [PAPER_POOL, SEED1]),
    "std-seed2": (STD, [SEED2]),
    "emo-seed2": (EMO, [PAPER_POOL, SEED2]),
    # pool range; sizes of 31 or more mean no pool, so an upper bound past 31 adds pool-free draws
    "emo-pool8": (EMO, ["model.moe.router.pool=8..32"]),
    "emo-pool16": (EMO, ["model.moe.router.pool=16..32"]),
    "emo-pool4-40": (EMO, [DEMO_POOL]),
    "emo-pool4-40-seed1": (EMO, [DEMO_POOL, SEED1]),
    "emo-pool4-40-seed2": (EMO, [DEMO_POOL, SEED2]),
    "emo-pool4-48": (EMO, ["model.moe.router.pool=4..48"]),
    "emo-pool8-48": (EMO, ["model.moe.router.pool=8..48"]),
    "emo-pool8-48-seed1": (EMO, ["model.moe.router.pool=8..48", SEED1]),
    # top-k weights rescaled to sum to 1 (norm_topk_prob), in both models: a pool concentrates the
    # softmax on fewer experts, so without it a token's expert weights are larger in training
    # (within its pool) than in pool-free inference
    "std-renorm": (STD, [RENORM]),
    "emo-renorm": (EMO, [PAPER_POOL, RENORM]),
    "emo-renorm-pool4-40": (EMO, [DEMO_POOL, RENORM]),
    "std-renorm-seed1": (STD, [RENORM, SEED1]),
    "emo-renorm-seed1": (EMO, [PAPER_POOL, RENORM, SEED1]),
    "emo-renorm-pool4-40-seed1": (EMO, [DEMO_POOL, RENORM, SEED1]),
    # pool size as a function of training progress: a pool-free phase at the start or at the end
    "emo-start25": (EMO, [PAPER_POOL, "train.pool_start=0.25"]),
    "emo-start25-seed1": (EMO, [PAPER_POOL, "train.pool_start=0.25", SEED1]),
    "emo-start50": (EMO, [PAPER_POOL, "train.pool_start=0.5"]),
    "emo-end80": (EMO, [PAPER_POOL, "train.pool_end=0.8"]),
    "emo-renorm-start25": (EMO, [PAPER_POOL, RENORM, "train.pool_start=0.25"]),
    # LR and warmup, for both models
    "std-lr2e-3": (STD, ["train.lr=2e-3"]),
    "emo-lr2e-3": (EMO, [PAPER_POOL, "train.lr=2e-3"]),
    "std-warm100": (STD, [WARM100]),
    "emo-warm100": (EMO, [PAPER_POOL, WARM100]),
    # the demo's pool with the longer warmup, on the three seeds of the gradient-spike finding
    "std-warm100-seed1": (STD, [WARM100, SEED1]),
    "std-warm100-seed2": (STD, [WARM100, SEED2]),
    "emo-pool4-40-warm100": (EMO, [DEMO_POOL, WARM100]),
    "emo-pool4-40-warm100-seed1": (EMO, [DEMO_POOL, WARM100, SEED1]),
    "emo-pool4-40-warm100-seed2": (EMO, [DEMO_POOL, WARM100, SEED2]),
    # with the longer warmup, the OLMoE default LB weight: a demo batch holds ~16-20 documents, not
    # the paper's ~500, so balancing it pushes a document's tokens off its pool (spec 4.2)
    "std-warm100-lb0.01": (STD, [WARM100, LB001]),
    "std-warm100-lb0.01-seed1": (STD, [WARM100, LB001, SEED1]),
    "std-warm100-lb0.01-seed2": (STD, [WARM100, LB001, SEED2]),
    "emo-pool4-40-warm100-lb0.01": (EMO, [DEMO_POOL, WARM100, LB001]),
    "emo-pool4-40-warm100-lb0.01-seed1": (EMO, [DEMO_POOL, WARM100, LB001, SEED1]),
    "emo-pool4-40-warm100-lb0.01-seed2": (EMO, [DEMO_POOL, WARM100, LB001, SEED2]),
    # more pool-free draws (34% instead of 27%): parity bought with some of the subsets' headroom
    "emo-pool4-44-warm100-lb0.01": (EMO, [POOL4_44, WARM100, LB001]),
    "emo-pool4-44-warm100-lb0.01-seed1": (EMO, [POOL4_44, WARM100, LB001, SEED1]),
    "emo-pool4-44-warm100-lb0.01-seed2": (EMO, [POOL4_44, WARM100, LB001, SEED2]),
    # LB counts summed over the last 32 steps (~500-600 documents, the paper's ~500 per balanced
    # batch) while the mean probabilities stay this batch's: balance across documents without
    # pulling a batch's few documents off their pools (spec 4.2). The EMO runs were worse than
    # without the window, so their standard twins were not run
    "std-warm100-lb0.01-win32": (STD, [WARM100, LB001, WIN32]),
    "std-warm100-lb0.01-win32-seed1": (STD, [WARM100, LB001, WIN32, SEED1]),
    "std-warm100-lb0.01-win32-seed2": (STD, [WARM100, LB001, WIN32, SEED2]),
    "emo-pool4-40-warm100-lb0.01-win32": (EMO, [DEMO_POOL, WARM100, LB001, WIN32]),
    "emo-pool4-40-warm100-lb0.01-win32-seed1": (EMO, [DEMO_POOL, WARM100, LB001, WIN32, SEED1]),
    "emo-pool4-40-warm100-lb0.01-win32-seed2": (EMO, [DEMO_POOL, WARM100, LB001, WIN32, SEED2]),
    # load balancing weight
    "std-lb0.01": (STD, [LB001]),
    "emo-lb0.01": (EMO, [PAPER_POOL, LB001]),
}
REFERENCE_KEYS = (
    "train.seed", "train.max_steps", "train.lr", "train.warmup_steps", "model.loss.lb_weight",
    "model.moe.router.renormalize", "model.moe.router.lb_window",
)
REFERENCE_DEFAULTS = {"model.moe.router.lb_window": 1}
"""Settings of records made before their key was compared: what those runs used."""


def parse_run(spec: str) -> tuple[str, int | None]:
    """"emo" -> ("emo", None): 500 steps (the demo's budget in the first rounds); "emo:250" ->
    ("emo", 250): another budget (the schedule decays over the whole run)."""
    name, _, steps = spec.partition(":")
    if name not in GRID or (steps and not steps.isdigit()):
        raise ValueError(f"unknown run '{spec}': expected NAME or NAME:STEPS with NAME one of {', '.join(GRID)}")
    return name, int(steps) if steps else None


def run_config(spec: str, store: str) -> RunConfig:
    name, steps = parse_run(spec)
    config, overrides = GRID[name]
    budget = [f"train.max_steps={steps}"] if steps else []
    cfg = RunConfig.from_yaml(SHIPPED_CONFIGS / config).with_overrides([f"data.store={store}", *COMMON, *overrides, *budget])
    return cfg.with_overrides([f"train.eval_every={cfg.train.max_steps // 2}"])


def run_dir_of(spec: str, out: Path) -> Path:
    return out / spec.replace(":", "@")


def run_one(spec: str, store: str, out: Path) -> dict:
    """Train a run (or reuse it) and measure its full model; cached in its directory's parity.json."""
    run_dir = run_dir_of(spec, out)
    if (run_dir / RESULT_FILE).is_file():
        return json.loads((run_dir / RESULT_FILE).read_text())
    name, steps = parse_run(spec)
    cfg = run_config(spec, store)
    started = time.perf_counter()
    result = train(cfg, run_dir, resume=(run_dir / "config.yaml").is_file(), progress=False)
    train_s = time.perf_counter() - started
    full = evaluate_checkpoint(
        result.final_dir, store, seq_len=cfg.data.seq_len, batch_size=cfg.train.eval_batch_size, num_eval_windows=0
    )
    record = {
        "name": spec,
        "config": GRID[name][0],
        "overrides": GRID[name][1] + ([f"train.max_steps={steps}"] if steps else []),
        "settings": {key: _lookup(cfg.to_dict(), key) for key in REFERENCE_KEYS},
        "val_loss": {d: s["loss"] for d, s in full["domains"].items()},
        "val_all": full["all"]["loss"],
        "train_s": round(train_s, 1),
    }
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    return record


def sweep_one(spec: str, store: str, out: Path) -> dict:
    """Add the 25%-kept subsets' losses (the demo sweep's protocol, one fraction) to a finished run."""
    record = run_one(spec, store, out)
    if "sweep" not in record:
        cfg = run_config(spec, store)
        sweep_cfg = SweepConfig(
            keep=[KEEP], seq_len=cfg.data.seq_len, batch_size=cfg.train.eval_batch_size, auto_eval_tokens=[]
        )
        record["sweep"] = run_sweep({spec: run_dir_of(spec, out) / "final"}, store, sweep_cfg, progress=False)
        atomic_write_text(run_dir_of(spec, out) / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    return record


def eval_pools_one(spec: str, store: str, out: Path, pools: list[str]) -> dict:
    """Validation loss of a finished run with each eval-mode pool ("off" = the HF routing), on the
    first `EVAL_POOL_WINDOWS` held-out windows per domain: does the model do better with the
    pool it was trained with than without?"""
    record = run_one(spec, store, out)
    cfg = run_config(spec, store)
    found = record.setdefault("eval_pools", {})
    for pool in pools:
        if pool in found:
            continue
        model, _ = load_model(run_dir_of(spec, out) / "final", overrides=[f"moe.router.eval_pool={pool}"])
        batches = eval_batches(
            store, Split.VAL, seq_len=cfg.data.seq_len, batch_size=cfg.train.eval_batch_size,
            max_windows_per_domain=EVAL_POOL_WINDOWS,
        )
        domains = TokenStore.open(store).domains
        found[pool] = {d: v.loss for d, v in loss_by_domain(model, batches, domains).items()}
        atomic_write_text(run_dir_of(spec, out) / RESULT_FILE, json.dumps(record, indent=2) + "\n")
    return record


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def mean_over_domains(losses: dict[str, float]) -> float:
    return statistics.fmean(losses.values())


def keep_increase(record: dict) -> float | None:
    if "sweep" not in record:
        return None
    sweep = record["sweep"]
    return mean_increase(for_method(sweep, methods_of(sweep)[0]), record["name"], f"{KEEP:g}")


def reference_of(record: dict, records: dict[str, dict]) -> dict | None:
    """The standard run with the same settings (seed, budget, LR, warmup, LB weight...), if finished."""
    def settings(rec: dict) -> dict:
        return {**REFERENCE_DEFAULTS, **rec["settings"]}

    for other in records.values():
        if other["config"] == STD and settings(other) == settings(record):
            return other
    return None


def results_table(records: dict[str, dict]) -> str:
    rows = []
    for name, rec in records.items():
        ref = reference_of(rec, records)
        gap = mean_over_domains(rec["val_loss"]) - mean_over_domains(ref["val_loss"]) if ref else None
        both = ref and rec is not ref and keep_increase(rec) is not None and keep_increase(ref) is not None
        ratio = keep_increase(rec) / keep_increase(ref) if both else None
        rows.append([
            name,
            " ".join(rec["overrides"]) or "(demo config)",
            f"{mean_over_domains(rec['val_loss']):.4f}",
            f"{rec['val_all']:.4f}",
            "ref" if ref is rec else (f"{gap:+.4f}" if gap is not None else "n/a"),
            "" if keep_increase(rec) is None else f"{keep_increase(rec):+.4f}",
            "" if ratio is None else f"{ratio:.2f}",
        ])
    header = [
        "run", "overrides", "val loss (mean over domains)", "val loss (all tokens)",
        "gap to std (same settings)", f"increase at {KEEP:g} kept", "ratio to std",
    ]
    return markdown_table(header, rows)


def write_table(out: Path) -> Path:
    records = {}
    for path in sorted(out.glob(f"*/{RESULT_FILE}")):
        record = json.loads(path.read_text())
        records[record["name"]] = record
    table = results_table(records)
    pooled = {name: rec["eval_pools"] for name, rec in records.items() if rec.get("eval_pools")}
    if pooled:
        pools = list(dict.fromkeys(p for found in pooled.values() for p in found))
        rows = [[name, *[f"{mean_over_domains(found[p]):.4f}" if p in found else "" for p in pools]]
                for name, found in pooled.items()]
        table += (f"\n\nValidation loss (mean over domains, {EVAL_POOL_WINDOWS} windows per domain) with an "
                  "eval-mode pool of that size:\n\n" + markdown_table(["run", *pools], rows))
    atomic_write_text(out / "results.md", table + "\n")
    return out / "results.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="*", metavar="RUN", help=f"runs in order, NAME or NAME:STEPS; names: {', '.join(GRID)}"
    )
    parser.add_argument("--store", required=True, help="the demo's token store (runs/demo/store)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sweep", action="store_true", help=f"also measure the subsets at {KEEP:g} kept")
    parser.add_argument("--eval-pools", metavar="P,P,...", help="also evaluate with these eval-mode pools, e.g. off,8,16,24")
    parser.add_argument("--table", action="store_true", help="only rewrite OUT/results.md")
    args = parser.parse_args(argv)
    for spec in args.runs:
        try:
            parse_run(spec)
        except ValueError as e:
            parser.error(str(e))
    for name in [] if args.table else args.runs:
        print(f"{time.strftime('%H:%M:%S')} {name}", flush=True)
        (sweep_one if args.sweep else run_one)(name, args.store, args.out)
        if args.eval_pools:
            eval_pools_one(name, args.store, args.out, args.eval_pools.split(","))
        write_table(args.out)
    print((write_table(args.out)).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
