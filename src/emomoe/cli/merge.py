"""`emomoe merge`: copy a (fine-tuned) subset's experts back into the full model at their original ids."""

from __future__ import annotations

import argparse
import json

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.select.merge import MergeConfig, merge_subset

EXAMPLES = """examples:
  emomoe merge --full runs/emo/final --subset subsets/emo-math-ft --out runs/emo-math-merged
  emomoe merge --full runs/emo/final --subset subsets/emo-math-ft --alpha 0.5 --router --out runs/emo-math-half
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge a subset's experts back into the full model at their original ids",
        description="Copy (or blend with --alpha) the subset's routed experts into the full model it was "
        "selected from. Router rows, shared experts and non-MoE weights stay unless asked for.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--full", required=True, metavar="DIR", help="the checkpoint the subset was selected from")
    p.add_argument("--subset", required=True, metavar="DIR", help="the (fine-tuned) subset")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_config_options(p, MergeConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(MergeConfig, args)
    merged = merge_subset(args.full, args.subset, args.out, cfg, force=args.force)
    print(f"wrote {args.out}: " + json.dumps(merged))
    return 0
