"""`emomoe demo`: the main job on the embedded corpus (what `make demo` runs)."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_field_flags, add_override_arg, field_values
from emomoe.errors import ConfigError
from emomoe.experiments.adapt import AdaptConfig, run_adapt
from emomoe.experiments.adapt_report import loss_table
from emomoe.experiments.auto_selection import auto_selection_table
from emomoe.experiments.demo import run_demo
from emomoe.experiments.sweep_tables import advantage_line, equal_bytes_line, summary_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train EMO and a standard MoE on the embedded corpus, then compare their expert subsets per domain",
        description="The main job: build an 8k tokenizer and a token store from the embedded corpus, "
        "train configs/demo-emo.yaml and configs/demo-std.yaml (same data, seed and budget), print "
        "both models' validation loss per domain, then sweep expert subsets (select per domain at keep "
        "fractions 1, 1/2, 1/4, 1/8, slice, evaluate on held-out documents; global, easy-ep, reap and random "
        "selection beside layerwise at 1/4, and at its bytes per-layer counts from one ranking of every layer's "
        "experts; how often --selection auto picks a document's domain), score both "
        "models, full and "
        "their 1/4 subsets, on the shipped lm-eval continuation task, analyze which experts serve which "
        "domains (OUT/analysis), and write OUT/report.md. Every step is cached in OUT: running it again "
        "reuses finished work and resumes an interrupted training run.",
        epilog="examples:\n  emomoe demo --out runs/demo\n"
        "  emomoe demo --out runs/demo-short --set train.max_steps=50   # a quick look (both models)\n"
        "  emomoe demo --out runs/demo --anneal   # adds the EMO-anneal of the standard model\n"
        "  emomoe demo --adapt --out runs/adapt   # the adaptation study instead (about 21 minutes)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", help="output directory (default: runs/demo, with --adapt runs/adapt)")
    add_override_arg(parser, "train.max_steps=50")
    parser.add_argument(
        "--anneal", action="store_true",
        help="also EMO-anneal the standard model (configs/demo-anneal.yaml) and sweep it beside the other two",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="train the models again (the tokenizer and token store are kept); with --adapt, redo every cell too",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or step banners")
    adapt = parser.add_argument_group(
        "adaptation study", "--adapt runs it instead of the main job: both models pretrained without one domain, "
        "then its subsets\nand full models fine-tuned on k of its documents (OUT/report.md). Its settings:",
    )
    adapt.add_argument("--adapt", action="store_true", help="run the adaptation study (README: the adaptation question)")
    add_field_flags(adapt, AdaptConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = field_values(AdaptConfig, args)
    if args.adapt:
        return run_adaptation(args, AdaptConfig.from_sources(values=settings))
    if settings:
        raise ConfigError(f"--{next(iter(settings)).replace('_', '-')}: a setting of the adaptation study; add --adapt")
    out = args.out or "runs/demo"
    result = run_demo(out, args.overrides, anneal=args.anneal, force=args.force, progress=not args.no_progress)
    print("Validation loss per domain (nats per token):\n" + result.table)
    print("\nMean held-out loss increase when keeping a fraction of the routed experts:")
    print(summary_table(result.sweep))
    print(advantage_line(result.sweep))
    print(equal_bytes_line(result.sweep))
    if result.sweep["auto_selection"]:
        print("\nHow often --selection auto picks a held-out document's domain from its first tokens:")
        print(auto_selection_table(result.sweep["auto_selection"]))
    print("\nAccuracy on the lm-eval continuation task (4 choices, chance 0.25):\n" + result.benchmark)
    print("\nModularity (domain similarity: lower is more modular; NMI: higher):\n" + result.modularity)
    print(f"\nReport: {result.report}")
    return 0


def run_adaptation(args: argparse.Namespace, cfg: AdaptConfig) -> int:
    if args.anneal:
        raise ConfigError("--anneal: not part of the adaptation study (--adapt); run them separately")
    out = args.out or "runs/adapt"
    results = run_adapt(out, cfg, args.overrides, force=args.force, progress=not args.no_progress)
    print(f"Loss on {cfg.held_out} (held out of pretraining) after fine-tuning on k of its documents:")
    print(loss_table(results))
    print(f"\nReport: {out}/report.md")
    return 0
