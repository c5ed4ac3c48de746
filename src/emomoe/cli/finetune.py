"""`emomoe finetune`: train a subset (or any model) on its domain with the paper's recipe."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.experiments.finetune import FinetuneConfig, finetune_subset

EXAMPLES = """examples:
  emomoe finetune --checkpoint subsets/emo-math --data runs/store --max-steps 100 --out subsets/emo-math-ft
  emomoe finetune --checkpoint subsets/emo-math --data runs/store --pairs qa.jsonl --out subsets/emo-math-qa
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a subset on its domain (the paper's recipe: AdamW, lr 5e-5, batch 32, one epoch)",
        description="Train every parameter of a subset (or any model) with the paper's recipe: HF Trainer's AdamW "
        "(betas 0.9, 0.999) at lr 5e-5, a linear warmup from 0 over 10%% of the steps then linear decay to 0, "
        "clipping at 1.0, a global batch of 32 (forwards of --batch-size rows, accumulated), one epoch; routing "
        "without the document pool; "
        "CE plus load balancing at 0.01 (averaged over layers), no z-losses unless asked for. Data: the "
        "training documents of the subset's domain(s), or a jsonl file of prompt/answer pairs (loss on the "
        "answers only, unless --no-answer-only).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="subset (or any model) checkpoint")
    p.add_argument("--data", required=True, metavar="STORE", help="token store (its tokenizer encodes --pairs)")
    p.add_argument("--pairs", metavar="FILE", help='jsonl of {"prompt": ..., "answer": ...} records to train on instead')
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning into --out")
    p.add_argument("--force", action="store_true", help="replace an existing --out (or an interrupted run into it)")
    p.add_argument("--no-progress", action="store_true")
    add_config_options(p, FinetuneConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(FinetuneConfig, args)
    done = finetune_subset(
        args.checkpoint, args.data, args.out, cfg, pairs=args.pairs, resume=args.resume, force=args.force,
        progress=not args.no_progress,
    )
    held_out = ", ".join(f"{d} {done['val_before'][d]:.3f} -> {v:.3f}" for d, v in done["val_after"].items())
    data = done.get("pairs") or ", ".join(done["domains"])
    print(f"wrote {args.out}: {done['num_steps']} steps on {data}; "
          f"train CE {done['first_ce']:.3f} -> {done['last_ce']:.3f}; held-out CE {held_out or 'n/a (no validation data)'}")
    return 0
