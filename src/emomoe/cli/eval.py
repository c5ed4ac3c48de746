"""`emomoe eval`: held-out loss and perplexity of a checkpoint, per domain."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.evaluate.loss import EvalConfig, evaluate_checkpoint
from emomoe.io import atomic_write_text, check_output_file
from emomoe.train.runtime import setup_runtime

EXAMPLES = """examples:
  emomoe eval --checkpoint runs/demo/emo/final --data runs/demo/store --domains code legal --out eval.json
  emomoe eval --checkpoint subsets/emo-code --data runs/demo/store --num-eval-windows 0   # every held-out window
  emomoe eval --checkpoint runs/demo/emo/final --data runs/demo/store --domains code --selection subsets/emo-code
  emomoe eval --checkpoint runs/demo/emo/final --data runs/demo/store --selection auto sel/code.json sel/legal.json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="held-out loss and perplexity of a checkpoint, per domain",
        description="Token-weighted next-token loss (nats/token) and perplexity on the validation documents "
        "of a token store, per domain and over all of them. Routing uses no document pool. With --selection, "
        "routing is restricted to a selection's experts (the sliced subset's loss, without slicing); with "
        "--selection auto, each window runs with the selection its first tokens choose, and 'chosen' counts "
        "the windows of each domain per selection.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR")
    p.add_argument("--data", required=True, metavar="STORE")
    p.add_argument("--out", metavar="FILE", help="write the JSON here instead of stdout")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true")
    add_config_options(p, EvalConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(EvalConfig, args)
    if args.out:
        check_output_file(args.out, args.force)
    setup_runtime()
    result = evaluate_checkpoint(args.checkpoint, args.data, cfg, progress=not args.no_progress)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
    else:
        print(text, end="")
    return 0
