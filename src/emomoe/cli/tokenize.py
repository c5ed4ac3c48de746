"""`emomoe tokenize`: raw text to a token store (train/val .npy arrays + document index)."""

from __future__ import annotations

import argparse

from emomoe.cli._corpus import EXPORT_CORPUS, add_input_arg, document_source
from emomoe.cli._options import add_config_options, config_from_args
from emomoe.data.tokenize import TokenizeConfig, tokenize_corpus
from emomoe.data.tokenizer import load_tokenizer

EXAMPLES = (
    "examples:\n" + EXPORT_CORPUS + "  emomoe tokenize --input corpus.jsonl --tokenizer tok --out store --val-fraction 0.02\n"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tokenize",
        help="tokenize text into a token store (train/val .npy arrays + document index)",
        description="Tokenize documents into a token store: uint16/uint32 .npy arrays with EOS after every "
        "document, an index per array and metadata.json. Validation documents are held out whole by a "
        "hash of their text, per domain. An interrupted run resumes from its completed chunks.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arg(p)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder or tokenizer.json")
    p.add_argument("--out", required=True, metavar="STORE", help="token store folder to write")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_options(p, TokenizeConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TokenizeConfig, args)
    tok = load_tokenizer(args.tokenizer, cfg.eos_token)
    store = tokenize_corpus(
        document_source(args.input, cfg), tok, args.out, val_fraction=cfg.val_fraction,
        min_val_docs=cfg.min_val_docs, chunk_bytes=cfg.chunk_bytes, overwrite=args.force,
        progress=not args.no_progress,
    )
    print(f"wrote {store.path} ({store.metadata['dtype']}, vocab {store.vocab_size}, EOS {store.eos_id})")
    print(store.summary())
    return 0
