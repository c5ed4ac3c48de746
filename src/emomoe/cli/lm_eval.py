"""`emomoe lm-eval`: lm-evaluation-harness tasks on a checkpoint or subset (the adapter's model `emomoe`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.errors import require
from emomoe.evaluate.continuation import GROUP
from emomoe.evaluate.domain_task import DOMAIN_TASK
from emomoe.experiments.benchmarks import LmEvalConfig, evaluate_checkpoint_tasks, scores_table, task_scores
from emomoe.io import atomic_write_text, check_output_file
from emomoe.train.runtime import setup_runtime

EXAMPLES = f"""examples:
  emomoe lm-eval --checkpoint runs/demo/emo/final --tasks {GROUP} {DOMAIN_TASK}
  emomoe lm-eval --checkpoint subsets/emo-code --tasks {GROUP}_code --data runs/demo/store --out code.json
  emomoe lm-eval --checkpoint runs/emo/final --tasks my_task --include-path my_tasks/ --limit 100
  emomoe lm-eval --checkpoint runs/demo/emo/final --tasks {GROUP}_code --selection subsets/emo-code
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lm-eval",
        help="run lm-evaluation-harness tasks on a checkpoint or subset",
        description=f"Evaluate a checkpoint with lm-evaluation-harness through emomoe's adapter (loglikelihood, "
        f"loglikelihood_rolling, generate_until with a KV cache; no document pool). The shipped offline tasks "
        f"{GROUP} (one task per domain, {GROUP}_<domain>: pick the true continuation of a held-out passage "
        f"among 4) and {DOMAIN_TASK} (which domain is a held-out passage from) are built from a token store's "
        "documents (test items from the held-out ones, train items from the training ones). With --selection, "
        "routing is restricted "
        "to a selection's experts (the sliced subset's scores, without slicing); with --selection auto, each "
        "request runs with the selection the first tokens of its context choose. Offline unless --online.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model checkpoint or subset")
    p.add_argument("--tokenizer", metavar="DIR", help="default: found from the checkpoint")
    p.add_argument("--data", metavar="STORE", help="token store of the shipped tasks (default: the checkpoint's run's)")
    p.add_argument("--out", metavar="FILE", help="write lm-eval's results as JSON here")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_config_options(p, LmEvalConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(LmEvalConfig, args)
    require("emomoe lm-eval", "eval", "lm_eval")
    if args.out:
        check_output_file(args.out, args.force)
    setup_runtime()
    results = evaluate_checkpoint_tasks(args.checkpoint, cfg, tokenizer=args.tokenizer, data=args.data)
    print(scores_table(task_scores(results)))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=2, default=float) + "\n")
    return 0
