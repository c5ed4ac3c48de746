"""`emomoe tokenizer train` and `emomoe tokenize`: from raw text to a tokenizer and a token store."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from emomoe.data.readers import DocumentSource, InvalidText
from emomoe.data.tokenize import CHUNK_BYTES, tokenize_corpus
from emomoe.data.tokenizer import load_tokenizer, sample_texts, train_tokenizer
from emomoe.errors import DataError

_MB = 1 << 20
_EXPORT_CORPUS = (
    "  python -c 'import json; from emomoe.data.corpus import embedded_corpus as c; "
    "[print(json.dumps(d)) for d in c()]' > corpus.jsonl   # the demo corpus as jsonl\n"
)
TOKENIZER_EXAMPLES = "examples:\n" + _EXPORT_CORPUS + "  emomoe tokenizer train --input corpus.jsonl --vocab-size 8192 --out tok\n"
TOKENIZE_EXAMPLES = (
    "examples:\n" + _EXPORT_CORPUS + "  emomoe tokenize --input corpus.jsonl --tokenizer tok --out store --val-fraction 0.02\n"
)
_INPUT_HELP = (
    "files or folders: .jsonl / .jsonl.gz / .jsonl.zst (one JSON object per line), .parquet, "
    "folders of .txt files (one document per file), or HF datasets saved with save_to_disk"
)


def _add_input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="SRC", help=_INPUT_HELP)
    parser.add_argument("--text-field", default="text", help="field or column holding the text (default: text)")
    parser.add_argument(
        "--domain-field", default="domain", help="field or column holding the domain label (default: domain)"
    )
    parser.add_argument(
        "--domain",
        metavar="NAME",
        help="label every document NAME (default: the domain field; for .txt, the subfolder below the input folder)",
    )
    parser.add_argument(
        "--invalid-utf8",
        choices=[m.value for m in InvalidText],
        default=InvalidText.SKIP.value,
        help="documents that are not valid UTF-8: skip and count them (default), replace the bad bytes "
        "with U+FFFD, or stop with an error. Empty documents are always skipped and counted.",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output")


def _source(args: argparse.Namespace) -> DocumentSource:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return DocumentSource(args.input, args.text_field, args.domain_field, args.domain, args.invalid_utf8)


def _train_tokenizer(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise DataError(f"{out}: already exists (pass --force to replace it)")
    source = _source(args)
    sample_bytes = int(args.sample_mb * _MB) if args.sample_mb > 0 else None
    tok = train_tokenizer(
        sample_texts(source, sample_bytes), args.vocab_size, min_frequency=args.min_frequency, show_progress=True
    )
    tok.save(out)
    print(f"wrote {out}: vocab {tok.vocab_size}, EOS {tok.eos_token!r} = {tok.eos_id}, hash {tok.hash[:12]}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.tokenizer, args.eos_token)
    store = tokenize_corpus(
        _source(args),
        tok,
        args.out,
        val_fraction=args.val_fraction,
        min_val_docs=args.min_val_docs,
        chunk_bytes=max(1, int(args.chunk_mb * _MB)),
        overwrite=args.force,
        progress=not args.no_progress,
    )
    print(f"wrote {store.path} ({store.metadata['dtype']}, vocab {store.vocab_size}, EOS {store.eos_id})")
    print(store.summary())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    tokenizer = subparsers.add_parser(
        "tokenizer", help="train a byte-level BPE tokenizer", epilog=TOKENIZER_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = tokenizer.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a byte-level BPE with an EOS token on text files",
        description="Train a byte-level BPE (HF tokenizers) with EOS <|endoftext|>; writes DIR/tokenizer.json "
        "and DIR/emomoe_tokenizer.json.",
        epilog=TOKENIZER_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_args(train)
    train.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size incl. EOS (default: 8192)")
    train.add_argument(
        "--sample-mb",
        type=float,
        default=64.0,
        help="train on about this many MB of text, a deterministic sample spread over the input; 0: all (default: 64)",
    )
    train.add_argument("--min-frequency", type=int, default=2, help="least count for a merge (default: 2)")
    train.add_argument("--out", required=True, metavar="DIR", help="tokenizer folder to write")
    train.set_defaults(func=_train_tokenizer)

    tokenize = subparsers.add_parser(
        "tokenize",
        help="tokenize text into a token store (train/val .npy arrays + document index)",
        description="Tokenize documents into a token store: uint16/uint32 .npy arrays with EOS after every "
        "document, an index per array and metadata.json. Validation documents are held out whole by a "
        "hash of their text, per domain. An interrupted run resumes from its completed chunks.",
        epilog=TOKENIZE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_args(tokenize)
    tokenize.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder or tokenizer.json")
    tokenize.add_argument("--eos-token", help="EOS token, if the tokenizer does not declare one")
    tokenize.add_argument("--out", required=True, metavar="STORE", help="token store folder to write")
    tokenize.add_argument(
        "--val-fraction", type=float, default=0.02, help="fraction of each domain held out (default: 0.02)"
    )
    tokenize.add_argument(
        "--min-val-docs",
        type=int,
        default=4,
        help="hold out at least this many documents per domain, but never more than half (default: 4)",
    )
    tokenize.add_argument(
        "--chunk-mb", type=float, default=CHUNK_BYTES / _MB, help="text per resumable chunk (default: 32)"
    )
    tokenize.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    tokenize.set_defaults(func=_tokenize)
