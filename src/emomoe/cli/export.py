"""`emomoe export gguf`: a checkpoint or subset as one GGUF file for llama.cpp, ollama and LM Studio."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.deploy.config import GGUFExportConfig
from emomoe.errors import optional_import

EXAMPLES = """examples:
  emomoe export gguf --checkpoint subsets/emo-math --out emo-math.gguf --type q8_0
  emomoe export gguf --checkpoint runs/emo-1t --out emo-1t-f16.gguf
then:
  llama-cli -m emo-math.gguf -p "Theorem 1." -n 64
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a checkpoint or subset for a runtime other than emomoe (GGUF for llama.cpp)",
        description="Write a checkpoint in a format other runtimes load. (`emomoe hf export` writes the "
        "Hugging Face layout.)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    gguf = formats.add_parser(
        "gguf",
        help="one GGUF file (llama.cpp's deepseek architecture) with the tokenizer inside",
        description="Write the model as llama.cpp's `deepseek` architecture, which computes EMO's inference "
        "graph (softmax over the routed experts, top-k without renormalising, the shared expert added with "
        "weight 1), with the tokenizer and a pre-tokenizer llama.cpp knows. Streams one tensor at a time; "
        "refuses in one line what llama.cpp cannot run exactly (e.g. different expert counts per layer).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gguf.add_argument("--checkpoint", required=True, metavar="CKPT", help="emomoe checkpoint, subset, or HF directory")
    gguf.add_argument("--out", required=True, metavar="FILE.gguf", help="the GGUF file to write")
    gguf.add_argument(
        "--tokenizer", metavar="PATH",
        help="tokenizer.json or its folder (default: the checkpoint's own, its source's, or its run's token store)",
    )
    gguf.add_argument("--force", action="store_true", help="replace an existing --out")
    add_config_options(gguf, GGUFExportConfig)
    gguf.set_defaults(func=_gguf)


def _gguf(args: argparse.Namespace) -> int:
    cfg = config_from_args(GGUFExportConfig, args)
    # The writer needs the optional gguf package; the other verbs must work without it.
    optional_import("gguf", "gguf", "emomoe export gguf")
    from emomoe.deploy.gguf import export_gguf

    out = export_gguf(args.checkpoint, args.out, cfg, tokenizer=args.tokenizer, force=args.force)
    print(f"wrote {out}; run it with: llama-cli -m {out}")
    return 0
