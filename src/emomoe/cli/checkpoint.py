"""`emomoe checkpoint consolidate`: an FSDP run's sharded checkpoint as a model checkpoint."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.train.consolidate import ConsolidateConfig, consolidate

EXAMPLES = """examples:
  emomoe checkpoint consolidate runs/emo/checkpoints/step-00020000 --out runs/emo/step-20000
  emomoe checkpoint consolidate runs/emo/checkpoints/step-00020000 --out /data/emo-20k --max-shard-size 2GB
then, like a run's final/:
  emomoe eval --checkpoint runs/emo/step-20000 --data store/
  emomoe hf export --checkpoint runs/emo/step-20000 --out hf/emo-20k --tokenizer store/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "checkpoint",
        help="turn an FSDP run's sharded training checkpoint into a model checkpoint",
        description="Work on a run's training checkpoints (RUN_DIR/checkpoints/step-N).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    cons = actions.add_parser(
        "consolidate",
        help="write the model of a sharded checkpoint in emomoe's model format",
        description="An FSDP run writes each checkpoint as every rank's shards of the weights and optimizer. "
        "This writes the model (not the optimizer) as one model checkpoint, like the run's final/: model.yaml, "
        "safetensors and checksums. It verifies every file first and streams one tensor at a time, so memory "
        "stays near one output shard (--max-shard-size), however large the model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cons.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="a sharded training checkpoint: RUN_DIR/checkpoints/step-N"
    )
    cons.add_argument("--out", required=True, metavar="DIR", help="the model checkpoint to write")
    cons.add_argument("--force", action="store_true", help="replace an existing --out")
    add_config_options(cons, ConsolidateConfig)
    cons.set_defaults(func=_consolidate)


def _consolidate(args: argparse.Namespace) -> int:
    out = consolidate(args.checkpoint, args.out, config_from_args(ConsolidateConfig, args), force=args.force)
    print(f"wrote {out}")
    return 0
