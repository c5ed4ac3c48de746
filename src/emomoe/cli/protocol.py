"""`emomoe protocol`: the paper's task protocol in one run (select on a task, evaluate, fine-tune, evaluate)."""

from __future__ import annotations

import argparse

from emomoe.cli._models import model_names
from emomoe.cli._options import add_config_options, config_from_args
from emomoe.evaluate.domain_task import DOMAIN_TASK
from emomoe.experiments.protocol import ProtocolConfig, run_protocol
from emomoe.train.runtime import setup_runtime

EXAMPLES = f"""examples:
  emomoe protocol --checkpoints runs/demo/emo/final runs/demo/std/final --names emo std --tasks {DOMAIN_TASK} \\
      --keep 0.25 0.125 --methods layerwise easy-ep random --num-calib 1 5 10 100 --finetune --out runs/protocol
  emomoe protocol --checkpoints emo-1b14b std-1b14b --references std-1b4b dense-1b --tasks mmlu_stem \\
      mmlu_humanities mmlu_social_sciences mmlu_other --keep 31 15 7 --num-fewshot 5 --online --out runs/mmlu
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "protocol",
        help="the paper's task protocol: select on a task's examples, evaluate, fine-tune, evaluate",
        description="For every task, model, selection method, keep and calibration size: select experts on "
        "examples of the task (its prompts with their gold answers, from its training and validation splits), "
        "evaluate the subset on the task's held-out split with lm-eval and, with --finetune, fine-tune it for an "
        "epoch on the task's training examples with the paper's recipe and evaluate it again. The whole models and "
        "the --references (memory-matched models evaluated as they are) are evaluated too. Writes results.json, "
        "report.md and every subset's selection file (selections/TASK/MODEL/METHOD/KEEP/n5.json, all.json or random.json); a second run "
        "into the same --out reuses the finished cells. Offline unless --online.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="DIR", help="models to select subsets of")
    p.add_argument("--names", nargs="+", metavar="NAME", help="their names in the results (default: directory names)")
    p.add_argument("--references", nargs="+", default=[], metavar="DIR",
                   help="models evaluated whole: a standard MoE trained at a subset's size, a dense model")
    p.add_argument("--reference-names", nargs="+", metavar="NAME", help="the references' names")
    p.add_argument("--data", metavar="STORE",
                   help="token store the shipped tasks are built from (default: the first checkpoint's run's)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="start over, replacing the results already in --out")
    p.add_argument("--no-progress", action="store_true")
    add_config_options(p, ProtocolConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ProtocolConfig, args)
    checkpoints = model_names(args.checkpoints, args.names)
    references = model_names(args.references, args.reference_names) if args.references else {}
    setup_runtime()
    results = run_protocol(checkpoints, args.out, cfg, references=references, data=args.data, force=args.force,
                           progress=not args.no_progress)
    print(f"wrote {len(results['cells'])} cells to {args.out}/results.json and report.md")
    return 0
