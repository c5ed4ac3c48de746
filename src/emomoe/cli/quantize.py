"""`emomoe quantize`: a checkpoint or subset with 8- or 4-bit integer weights."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.deploy.quantize import QuantizeConfig, quantize_checkpoint

EXAMPLES = """examples:
  emomoe quantize --checkpoint subsets/emo-math --bits 8 --out subsets/emo-math-int8
  emomoe quantize --checkpoint subsets/emo-math --bits 4 --group-size 32 --out subsets/emo-math-int4
then, like any checkpoint:
  emomoe generate --checkpoint subsets/emo-math-int8 --prompt "Theorem 1."
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="store a checkpoint's weights as 8- or 4-bit integers (weight-only; runs on them directly)",
        description="Write the checkpoint with its experts, attention projections and LM head as integers with "
        "one float scale per group of inputs (symmetric, like llama.cpp's q8_0/q4_0; the LM head keeps 8 bits). "
        "Embeddings, norms and router gates stay as stored. eval, generate, analyze and lm-eval run on the "
        "integers; hf export and export gguf dequantize. Streams one tensor at a time.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="emomoe checkpoint, subset, or HF directory")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_config_options(p, QuantizeConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(QuantizeConfig, args)
    record = quantize_checkpoint(args.checkpoint, args.out, cfg, force=args.force)
    print(f"wrote {args.out}: {record.bits}-bit weights in groups of {record.group_size}")
    return 0
