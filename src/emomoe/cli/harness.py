"""`emomoe lm-eval`: lm-evaluation-harness tasks on a checkpoint or subset (the adapter's model `emomoe`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emomoe.errors import ConfigError
from emomoe.evaluate.continuation import CONTEXT_TOKENS, CONTINUATION_TOKENS, GROUP, NUM_ITEMS
from emomoe.experiments.benchmarks import evaluate_checkpoint_tasks, go_offline, scores_table, task_scores
from emomoe.io import atomic_write_text
from emomoe.train.runtime import setup_runtime

EXAMPLES = f"""examples:
  emomoe lm-eval --checkpoint runs/demo/emo/final --tasks {GROUP}
  emomoe lm-eval --checkpoint subsets/emo-code --tasks {GROUP}_code --data runs/demo/store --out code.json
  emomoe lm-eval --checkpoint runs/emo/final --tasks my_task --include-path my_tasks/ --limit 100
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lm-eval",
        help="run lm-evaluation-harness tasks on a checkpoint or subset",
        description=f"Evaluate a checkpoint with lm-evaluation-harness through emomoe's adapter (loglikelihood, "
        f"loglikelihood_rolling, generate_until with a KV cache; no document pool). The shipped offline task "
        f"{GROUP} (one task per domain, {GROUP}_<domain>: pick the true continuation of a held-out passage "
        "among 4) is built from the held-out documents of a token store. Offline unless --online.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model checkpoint or subset")
    p.add_argument("--tasks", required=True, nargs="+", metavar="TASK", help="lm-eval task or group names")
    p.add_argument("--tokenizer", metavar="DIR", help="default: found from the checkpoint")
    p.add_argument("--data", metavar="STORE", help=f"token store for {GROUP} (default: the checkpoint's run's)")
    p.add_argument("--num-items", type=int, default=NUM_ITEMS, metavar="N",
                   help=f"{GROUP} items per domain (default {NUM_ITEMS})")
    p.add_argument("--context-tokens", type=int, default=CONTEXT_TOKENS, metavar="N",
                   help=f"{GROUP} passage length (default {CONTEXT_TOKENS})")
    p.add_argument("--continuation-tokens", type=int, default=CONTINUATION_TOKENS, metavar="N",
                   help=f"{GROUP} choice length (default {CONTINUATION_TOKENS})")
    p.add_argument("--include-path", nargs="+", default=[], metavar="DIR", help="folders of your own task YAMLs")
    p.add_argument("--limit", type=float, help="at most this many items per task (a fraction if < 1)")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help=f"seed of lm-eval and of the {GROUP} distractors")
    p.add_argument("--online", action="store_true", help="let lm-eval download task data (default: offline)")
    p.add_argument("--out", metavar="FILE", help="write lm-eval's results as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.num_items < 1:
        raise ConfigError("--batch-size, --num-items: expected positive integers")
    if not args.online:
        go_offline()
    setup_runtime()
    limit = None if args.limit is None else (args.limit if args.limit < 1 else int(args.limit))
    results = evaluate_checkpoint_tasks(
        args.checkpoint, args.tasks, tokenizer=args.tokenizer, data=args.data, include_path=args.include_path,
        num_items=args.num_items, context_tokens=args.context_tokens,
        continuation_tokens=args.continuation_tokens, batch_size=args.batch_size, limit=limit,
        num_fewshot=args.num_fewshot, seed=args.seed,
    )
    print(scores_table(task_scores(results)))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=2, default=float) + "\n")
    return 0
