"""What `emomoe quantize` costs in held-out loss, on the demo's models and their 1/4 subsets.

For each model of a finished `make demo` (EMO and the standard MoE): the full model, and for each
domain the subset of 1/4 of the routed experts that the demo's sweep selected on that domain
(re-sliced from the sweep's `kept_experts`, with `emomoe select --selection`), each as it is and
quantized to int8 and int4 (the default group sizes). Every model is scored with `emomoe eval`'s
code on the sweep's held-out windows: the full models on every domain, a subset on its own
domain. Losses are means over the domains, in nats per token.

`int8_loss_change` is what the issue bounds (within 0.005 nats); `emo_subset_increase_vs_std`
is EMO's headline, the loss increase of EMO's 1/4 subsets over the full float model divided by
the standard MoE's, for float, int8 and int4 subsets: quantizing must not change it by more than
0.02.

    python bench/quantize_quality.py --demo runs/demo   # after `make demo`; a few minutes
    python bench/quantize_quality.py --quick            # tiny random models on synthetic data, seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from emomoe.analyze.sweep_results import RESULTS_FILE
from emomoe.checkpoint import CheckpointReader, save_model
from emomoe.deploy.quantize import quantize_checkpoint
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.model import ModelConfig, build_model
from emomoe.select.subset import select_subset

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from big_select import build_store  # noqa: E402

KEEP = "0.25"
TARGETS = {"int8_loss_change": 0.005, "ratio_change": 0.02}
VARIANTS = ("float", "int8", "int4")


GROUP_SIZES: dict[str, set[int]] = {"int8": set(), "int4": set()}
"""The group sizes `emomoe quantize` chose (its defaults, as wide as the matrices allow), for the report."""


def quantized(checkpoint: Path, work: Path, tag: str) -> dict[str, Path]:
    """The checkpoint as it is and quantized to each bit width (into `work`, named after `tag`)."""
    out = {"float": checkpoint}
    for bits in (8, 4):
        out[f"int{bits}"] = work / f"{tag}-int{bits}"
        GROUP_SIZES[f"int{bits}"].add(quantize_checkpoint(checkpoint, out[f"int{bits}"], bits=bits).group_size)
    return out


def losses(checkpoint: Path, store: Path, domains: list[str], windows: int) -> dict[str, float]:
    result = evaluate_checkpoint(checkpoint, store, domains=domains, num_eval_windows=windows, progress=False)
    return {d: result["domains"][d]["loss"] for d in domains}


def subset_of(checkpoint: Path, kept: list[list[int]], out: Path) -> Path:
    """The subset keeping `kept` (per MoE layer), sliced by `select --selection` from a selection file."""
    with CheckpointReader(checkpoint) as reader:
        layers = [i for i in range(reader.config.num_layers) if reader.config.moe.routed_in_layer(i)]
        record = {"moe_layers": layers, "kept_experts": kept, "source_sha256": reader.fingerprint()}
    selection = out.with_suffix(".selection.json")
    selection.write_text(json.dumps(record))
    select_subset(checkpoint, out, selection=selection)
    return out


def measure(models: dict[str, Path], store: Path, sweep: dict, work: Path) -> dict:
    settings = sweep["settings"]
    domains, windows = settings["domains"], settings.get("num_eval_windows", 64)
    out: dict = {}
    for name, final in models.items():
        full = {v: losses(c, store, domains, windows) for v, c in quantized(final, work, name).items()}
        subsets = {v: {} for v in VARIANTS}
        for domain in domains:
            sub = subset_of(final, sweep["kept_experts"][name][KEEP][domain], work / f"{name}-{domain}")
            for variant, checkpoint in quantized(sub, work, sub.name).items():
                subsets[variant][domain] = losses(checkpoint, store, [domain], windows)[domain]
        out[name] = {
            "full": {v: round(_mean(full[v]), 5) for v in VARIANTS},
            f"subset_{KEEP}": {v: round(_mean(subsets[v]), 5) for v in VARIANTS},
        }
        for part in ("full", f"subset_{KEEP}"):
            row = out[name][part]
            row["int8_loss_change"] = round(row["int8"] - row["float"], 5)
            row["int4_loss_change"] = round(row["int4"] - row["float"], 5)
    return out


def _mean(per_domain: dict[str, float]) -> float:
    return sum(per_domain.values()) / len(per_domain)


def headline(result: dict, emo: str, std: str) -> dict:
    """EMO's subset loss increase over its full float model, over the standard MoE's, per variant."""
    def increase(name: str, variant: str) -> float:
        return result[name][f"subset_{KEEP}"][variant] - result[name]["full"]["float"]

    ratios = {v: round(increase(emo, v) / increase(std, v), 4) for v in VARIANTS}
    return {"emo_subset_increase_vs_std": ratios,
            "ratio_change": {v: round(ratios[v] - ratios["float"], 4) for v in ("int8", "int4")}}


def quick_inputs(work: Path) -> tuple[dict[str, Path], Path, dict]:
    """Two tiny random models, a synthetic store and a sweep-like record of random 1/4 subsets."""
    store = build_store(work / "store", vocab_size=512, num_docs=12)
    models, kept = {}, {}
    for i, name in enumerate(("emo", "std")):
        cfg = ModelConfig.preset("tiny").with_overrides(
            [f"vocab_size={store.vocab_size}", f"eos_id={store.eos_id}", "moe.router.eval_pool=off"]
        )
        torch.manual_seed(i)
        models[name] = save_model(work / name, build_model(cfg), cfg)
        routed = cfg.moe.num_experts - cfg.moe.router.num_shared_experts
        gen = torch.Generator().manual_seed(i)
        kept[name] = {KEEP: {d: [sorted(torch.randperm(routed, generator=gen)[:2].tolist())
                                 for _ in range(cfg.num_layers)] for d in store.domains}}
    sweep = {"kept_experts": kept, "settings": {"domains": store.domains, "num_eval_windows": 2}}
    return models, store.path, sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished `make demo` directory")
    parser.add_argument("--quick", action="store_true", help="tiny random models instead of the demo's")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary checkpoints go")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quantize_quality.", dir=args.dir))
    try:
        if args.quick:
            models, store, sweep = quick_inputs(work)
        else:
            models = {name: args.demo / name / "final" for name in ("emo", "std")}
            store, sweep = args.demo / "store", json.loads((args.demo / RESULTS_FILE).read_text())
        result = measure(models, store, sweep, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = headline(result, "emo", "std")
    print(json.dumps({
        "models": "tiny random (--quick)" if args.quick else str(args.demo),
        "keep": KEEP,
        "group_sizes": {variant: sorted(sizes) for variant, sizes in GROUP_SIZES.items()},
        "losses": result,
        **summary,
        "targets_met": {
            "int8_loss_change": all(
                abs(result[m][part]["int8_loss_change"]) <= TARGETS["int8_loss_change"]
                for m in result for part in ("full", f"subset_{KEEP}")
            ),
            "ratio_change_int8": abs(summary["ratio_change"]["int8"]) <= TARGETS["ratio_change"],
        },
    }))


if __name__ == "__main__":
    main()
