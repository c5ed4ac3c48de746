"""`emomoe select`: carve an expert subset out of a checkpoint and save it as a smaller model."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.errors import ConfigError
from emomoe.experiments.task_data import select_on_task
from emomoe.select.subset import SelectConfig, select_subset
from emomoe.train.runtime import setup_runtime

EXAMPLES = """examples:
  emomoe select --checkpoint runs/emo/final --data runs/store --calib math --keep 0.25 --out subsets/emo-math
  emomoe select --checkpoint runs/emo/final --data runs/store --calib code,legal --keep 8 --out subsets/emo-cl
  emomoe select --checkpoint runs/emo/final --calib prompts.jsonl --tokenizer runs/store/tokenizer \\
      --keep 8,8,4,4 --method easy-ep --out subsets/emo-prompts
  emomoe select --checkpoint runs/emo/final --data runs/store --calib math --budget-gb 0.02 --out subsets/emo-math-20mb
  emomoe select --checkpoint runs/emo/final --selection subsets/emo-math/selection.json --out subsets/again
  emomoe select --checkpoint runs/demo/emo/final --task emomoe_domain --num-calib 10 --num-fewshot 3 \\
      --keep 0.25 --out subsets/emo-domain
  emomoe select --checkpoint runs/emo/final --task mmlu_stem --num-calib 5 --online --keep 0.25 --out subsets/emo-stem
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select",
        help="choose a per-domain subset of experts and save it as a smaller model",
        description="Rank each MoE layer's routed experts on calibration data, keep the top ones (shared "
        "experts always stay), physically slice the rest away, and save the subset (safetensors in the stored "
        "dtype, model.yaml, selection.json). --keep gives every layer its count; --budget-gb or --keep-params "
        "give the subset's size instead, and the layers get their counts from one ranking of all their "
        "experts. The subset loads on its own and routes by softmax over the kept "
        "experts. The checkpoint (ours or a Hugging Face directory, sharded or not) is streamed one layer at a "
        "time, so it may be larger than memory. With --selection, the experts kept by an earlier selection of "
        "the same checkpoint are extracted again, without calibration. With --task, the calibration data are "
        "examples of an lm-eval task (ours or the harness's), formatted as the task prompts them with their gold "
        "answers, each its own padded row.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model checkpoint (EMO or standard)")
    p.add_argument(
        "--calib", metavar="SOURCE",
        help="calibration data: domain(s) of the --data store, comma-separated for one subset serving their "
        "union, or text files (jsonl/parquet/.txt folder); not needed for --method random",
    )
    p.add_argument(
        "--task", metavar="NAME",
        help="calibrate on --num-calib examples of this lm-eval task or group instead of --calib (see --splits)",
    )
    p.add_argument(
        "--data", metavar="STORE",
        help="token store whose training documents --calib domains name (and that the shipped tasks are built from)",
    )
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer for text-file calibration (default: the store's)")
    p.add_argument(
        "--selection", metavar="FILE",
        help="keep the experts of this selection.json (or subset directory), made from the same checkpoint",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the subset checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true")
    add_config_options(p, SelectConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(SelectConfig, args)
    setup_runtime()
    if args.task is not None:
        if args.calib is not None or args.selection is not None:
            raise ConfigError("--task: calibrates instead of --calib, and --selection needs no calibration; give one")
        record = select_on_task(
            args.checkpoint, args.out, cfg, task=args.task, data=args.data, tokenizer=args.tokenizer,
            force=args.force, progress=not args.no_progress,
        )
    else:
        record = select_subset(
            args.checkpoint, args.out, cfg, calibration=args.calib, store=args.data, tokenizer=args.tokenizer,
            selection=args.selection, force=args.force, progress=not args.no_progress,
        )
    kept = ", ".join(str(len(k)) for k in record["kept_experts"])
    total, source_total = record["num_params"]["total"], record["source_num_params"]["total"]
    budget = record.get("budget")
    fits = f"; {budget['used']:,} of the budget's {budget['limit']:,} {budget['unit']}" if budget else ""
    print(f"wrote {args.out}: routed experts kept per MoE layer {kept} (+ shared); "
          f"{total:,} of {source_total:,} parameters ({total / source_total:.1%}){fits}")
    return 0
