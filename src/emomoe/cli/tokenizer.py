"""`emomoe tokenizer train`: a byte-level BPE tokenizer trained on raw text."""

from __future__ import annotations

import argparse
from pathlib import Path

from emomoe.cli._corpus import EXPORT_CORPUS, add_input_arg, document_source
from emomoe.cli._options import add_config_options, config_from_args
from emomoe.data.tokenizer import TokenizerTrainConfig, sample_texts, train_tokenizer
from emomoe.io import refuse_existing

EXAMPLES = "examples:\n" + EXPORT_CORPUS + "  emomoe tokenizer train --input corpus.jsonl --vocab-size 8192 --out tok\n"


def register(subparsers: argparse._SubParsersAction) -> None:
    tokenizer = subparsers.add_parser(
        "tokenizer", help="train a byte-level BPE tokenizer", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = tokenizer.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a byte-level BPE with an EOS token on text files",
        description="Train a byte-level BPE (HF tokenizers) with EOS <|endoftext|>; writes DIR/tokenizer.json "
        "and DIR/emomoe_tokenizer.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arg(train)
    train.add_argument("--out", required=True, metavar="DIR", help="tokenizer folder to write")
    train.add_argument("--force", action="store_true", help="replace an existing output")
    add_config_options(train, TokenizerTrainConfig)
    train.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TokenizerTrainConfig, args)
    out = Path(args.out)
    refuse_existing(out, args.force)
    source = document_source(args.input, cfg)
    tok = train_tokenizer(
        sample_texts(source, cfg.sample_bytes), cfg.vocab_size, min_frequency=cfg.min_frequency, show_progress=True
    )
    tok.save(out)
    print(f"wrote {out}: vocab {tok.vocab_size}, EOS {tok.eos_token!r} = {tok.eos_id}, hash {tok.hash[:12]}")
    return 0
