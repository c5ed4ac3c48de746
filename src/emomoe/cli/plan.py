"""`emomoe plan`: whether a run config fits its GPUs, and how long a step would take."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_field_flags, add_override_arg, field_values
from emomoe.train.config import RunConfig, config_path
from emomoe.train.plan import DoesNotFit, PlanConfig, plan

EXAMPLES = """examples (shipped configs load by name):
  emomoe plan --config emo-1b14b --gpus 128 --gpu-memory 80GB
  emomoe plan --config emo-1b14b --gpus 64 --gpu-memory 80GB --set train.num_micro_batches=4 --mfu 0.3
  emomoe plan --config emo-1b14b --gpus 128 --gpu-memory 40GB --set train.activation_checkpointing=true
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="whether a run config fits its GPUs, and how long a step would take",
        description="Build the config's model on the meta device (no memory) and print, per GPU: parameter, "
        "gradient and AdamW state under the config's strategy (train.parallelism, sharded by FSDP), what the "
        "strategy and bf16 autocast add, and the activations of a micro-batch with and without activation "
        "checkpointing; then the global batch in tokens, model FLOPs per step and the time per step at the "
        "assumed MFU. Exits with status 2 and one line naming what does not fit if the total exceeds "
        "--gpu-memory.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the run config to plan (a path, or a shipped config's name: emo-1b14b)")
    add_override_arg(parser, "train.num_micro_batches=4")
    add_field_flags(parser.add_argument_group("settings", "The fields of PlanConfig."), PlanConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = plan(RunConfig.from_yaml(config_path(args.config), args.overrides),
                  PlanConfig.from_sources(values=field_values(PlanConfig, args)))
    print(result.report(args.config))
    if not result.fits:
        raise DoesNotFit(result.problem())
    return 0
