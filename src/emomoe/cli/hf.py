"""`emomoe hf import` and `emomoe hf export`: Hugging Face checkpoints in and out."""

from __future__ import annotations

import argparse

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.hf.convert import ExportConfig, ImportConfig, export_hf, import_hf

IMPORT_EXAMPLE = """example:
  emomoe hf import --hf ~/models/Emo_1b14b_1T --out runs/emo-1t
"""
EXPORT_EXAMPLE = """examples:
  emomoe hf export --checkpoint subsets/emo-math --out hf/emo-math --tokenizer runs/store
  emomoe hf export --checkpoint runs/emo-1t --out hf/emo-1t-bf16 --dtype bfloat16 --max-shard-size 2GB
then, in Python (transformers only):
  AutoModelForCausalLM.from_pretrained("hf/emo-math", trust_remote_code=True)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    hf = subparsers.add_parser(
        "hf",
        help="import a Hugging Face checkpoint (EMO and its dense baseline, OLMoE, Mixtral) or export ours in "
        "the EMO layout",
        description="Convert between Hugging Face checkpoint directories and emomoe checkpoints. Every verb "
        "that takes --checkpoint also reads a HF EMO, OLMoE or Mixtral directory, or the EMO release's dense baseline "
        "(olmo2_noqknorm_prenorm), as it is.",
        epilog=IMPORT_EXAMPLE + EXPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = hf.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = actions.add_parser(
        "import",
        help="write a HF EMO / dense EMO baseline / OLMoE / Mixtral directory as an emomoe checkpoint",
        description="Read a HF checkpoint directory (config.json, safetensors, tokenizer files) and write an "
        "emomoe checkpoint in the stored dtype. The model routes without a document pool and attends "
        "causally over the whole input, as in transformers; the tokenizer files and config.json come along "
        "so that an export reproduces them.",
        epilog=IMPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("--hf", required=True, metavar="DIR", help="HF checkpoint directory")
    imp.add_argument("--out", required=True, metavar="CKPT", help="emomoe checkpoint directory to write")
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    add_config_options(imp, ImportConfig)
    imp.set_defaults(func=_import)

    exp = actions.add_parser(
        "export",
        help="write a checkpoint or subset in the official HF EMO layout, loadable with transformers",
        description="Write the official EmoForCausalLM layout (tensor names and shapes, config.json fields; a "
        "subset gets num_experts_per_layer) plus our own configuration_emo.py / modeling_emo.py and auto_map, "
        "so AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) works with plain transformers, "
        "generate() included. Weights are sharded with model.safetensors.index.json above --max-shard-size.",
        epilog=EXPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("--checkpoint", required=True, metavar="CKPT", help="emomoe checkpoint, subset, or HF directory")
    exp.add_argument("--out", required=True, metavar="DIR", help="HF directory to write")
    exp.add_argument(
        "--tokenizer", metavar="PATH",
        help="tokenizer.json, its folder, or a token store (default: the checkpoint's own, or for a subset its "
        "source's)",
    )
    exp.add_argument("--force", action="store_true", help="replace a non-empty --out")
    add_config_options(exp, ExportConfig)
    exp.set_defaults(func=_export)


def _import(args: argparse.Namespace) -> int:
    out = import_hf(args.hf, args.out, config_from_args(ImportConfig, args), force=args.force)
    print(f"wrote {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExportConfig, args)
    out = export_hf(args.checkpoint, args.out, cfg, tokenizer=args.tokenizer, force=args.force)
    print(f"wrote {out}; load it with AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
