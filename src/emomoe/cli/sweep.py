"""`emomoe sweep`: select and evaluate every domain at several keep fractions, for several models."""

from __future__ import annotations

import argparse
from pathlib import Path

from emomoe.analyze.sweep_results import RESULTS_FILE, for_method, keeps_descending, mean_increase, methods_of
from emomoe.cli._models import model_names
from emomoe.cli._options import add_config_options, config_from_args
from emomoe.experiments.sweep import SELECTIONS_DIR, SweepConfig, run_sweep, write_sweep
from emomoe.experiments.sweep_tables import equal_bytes_line
from emomoe.io import check_output_dir, refuse_existing
from emomoe.train.runtime import setup_runtime

EXAMPLES = """examples:
  emomoe sweep --checkpoints runs/emo/final runs/std/final --names emo std --data runs/store --out runs/sweep
  emomoe sweep --checkpoints runs/emo/final --data runs/store --keep 1.0,0.25 --methods easy-ep reap \\
      --domains code math --out s
  emomoe sweep --checkpoints runs/demo/emo/final runs/demo/std/final --data runs/demo/store --keep 1.0 --out runs/auto
  emomoe sweep --checkpoints runs/emo/final runs/std/final --data runs/store --keep 1.0,0.25 --equal-bytes 0.25 \\
      --out runs/bytes
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="select and evaluate every domain at several keep fractions, for several models",
        description="For every model, domain, selection method and keep fraction: select experts on the domain's "
        "training documents, slice, and evaluate on its held-out documents; and score --selection auto: how often "
        "the first --auto-eval-tokens tokens of a held-out document choose its own domain's calibration profile. "
        "Writes "
        "results.json ({loss: {method: {model: {keep: {domain: loss}}}}, params: ...}), every subset as "
        "selections/MODEL/METHOD/KEEP/DOMAIN.json (for --selection), report.md (tables) and loss_vs_keep.png. "
        "--keep 1.0 alone evaluates the full models and the auto choice only. --equal-bytes adds, at those "
        "fractions, a subset of the same bytes whose per-layer counts come from one ranking of every layer's "
        "experts (as select --budget-gb makes it).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="DIR")
    p.add_argument("--names", nargs="+", metavar="NAME", help="model names in the results (default: directory names)")
    p.add_argument("--data", required=True, metavar="STORE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace the results already in --out")
    p.add_argument("--no-progress", action="store_true")
    add_config_options(p, SweepConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(SweepConfig, args)
    checkpoints = model_names(args.checkpoints, args.names)
    check_output_dir(args.out)
    refuse_existing(Path(args.out) / RESULTS_FILE, args.force, " (results of an earlier sweep)")
    refuse_existing(Path(args.out) / SELECTIONS_DIR, args.force, " (selection files of an earlier sweep)")
    setup_runtime()
    results = run_sweep(checkpoints, args.data, cfg, progress=not args.no_progress)
    report = write_sweep(args.out, results, force=args.force)
    for method in methods_of(results):
        view = for_method(results, method)
        for name in view["loss"]:
            keeps = [k for k in keeps_descending(view) if float(k) < 1]
            means = ", ".join(f"{k}: {mean_increase(view, name, k):+.3f}" for k in keeps)
            if means:
                print(f"{name} ({method}): mean held-out loss increase {means}")
    if results["equal_bytes"]:
        print(equal_bytes_line(results))
    for name, per_tokens in results["auto_selection"].items():
        accuracy = ", ".join(f"{tokens} tokens {cell['accuracy']:.3f}" for tokens, cell in per_tokens.items())
        print(f"{name}: --selection auto picks the document's domain at {accuracy}")
    print(f"wrote {report} and results.json in {args.out}")
    return 0
