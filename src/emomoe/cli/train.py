"""`emomoe train`: train EMO or a standard MoE from a YAML config (under torchrun: data parallel)."""

from __future__ import annotations

import argparse
from pathlib import Path

from emomoe import distributed
from emomoe.cli._options import add_override_arg
from emomoe.errors import ConfigError
from emomoe.train.config import RunConfig, config_path
from emomoe.train.rundir import CONFIG_FILE
from emomoe.train.trainer import train

EXAMPLES = """examples (shipped configs load by name: demo-emo, demo-std, demo-anneal, emo-1b14b, std-1b14b, std-1b4b):
  emomoe train --config demo-emo --set data.store=runs/demo/store --out runs/emo
  emomoe train --config demo-emo --set data.store=runs/demo/store --dry-run     # print the resolved config
  emomoe train --config demo-emo --set data.store=runs/demo/store --out runs/emo --set train.max_steps=200 \\
      --set train.checkpoint_every=50 --set model.moe.router.pool=4..31
  emomoe train --out runs/emo --resume                 # continue from the latest checkpoint
  torchrun --nproc-per-node=2 -m emomoe train --config demo-std --set data.store=runs/demo/store --out runs/std-ddp
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config into a run directory",
        description="Train EMO or a standard MoE. Writes RUN_DIR/config.yaml (the resolved config), "
        "metrics.jsonl, checkpoints/ and final/ (a model checkpoint for select/eval). Launch with "
        "torchrun --nproc-per-node=N -m emomoe train ... for data-parallel training.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="run config YAML (default with --resume: RUN_DIR/config.yaml)")
    add_override_arg(parser, "train.lr=1e-3")
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (required unless --dry-run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config (preset expanded, overrides applied) and exit")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its latest checkpoint")
    mode.add_argument("--force", action="store_true", help="delete the run already in RUN_DIR and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl is still written)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out is None and not args.dry_run:
        raise ConfigError("--out RUN_DIR is required (or --dry-run to only print the config)")
    if args.config is None and not (args.resume and args.out):
        raise ConfigError("--config is required unless --resume continues the run stored in --out")
    path = config_path(args.config) if args.config else Path(args.out) / CONFIG_FILE
    cfg = RunConfig.from_yaml(path, args.overrides)
    if args.dry_run:
        print(cfg.to_yaml(), end="")
        return 0
    out = Path(args.out)
    is_main = True
    try:
        result = train(cfg, out, resume=args.resume, force=args.force, progress=not args.no_progress)
        is_main = distributed.is_main_process()
    finally:
        distributed.shutdown()
    if is_main:
        losses = ", ".join(f"{name} {loss:.3f}" for name, loss in result.val_loss.items())
        if result.first_step >= cfg.train.max_steps:
            print(f"nothing to train: the run is at step {result.first_step} and train.max_steps is "
                  f"{cfg.train.max_steps} (raise train.max_steps to train on); final model: {result.final_dir}")
        elif result.first_step:
            steps = f"step {result.step}" if result.step == result.first_step + 1 else \
                f"steps {result.first_step + 1}-{result.step}"
            print(f"trained {steps} (resumed at step {result.first_step}); final model: {result.final_dir}")
        else:
            print(f"trained {result.step} steps; final model: {result.final_dir}")
        if losses:
            print(f"validation loss (nats/token): {losses}")
    return 0
