"""What the verbs that read raw text (tokenizer train, tokenize) share: their inputs and examples."""

from __future__ import annotations

import argparse
import logging

from emomoe.data.readers import DocumentSource, ReadConfig

EXPORT_CORPUS = (
    "  python -c 'import json; from emomoe.data.corpus import embedded_corpus as c; "
    "[print(json.dumps(d)) for d in c()]' > corpus.jsonl   # the demo corpus as jsonl\n"
)
_INPUT_HELP = (
    "files or folders: .jsonl / .jsonl.gz / .jsonl.zst (one JSON object per line), .parquet, "
    "folders of .txt files (one document per file), or HF datasets saved with save_to_disk"
)


def add_input_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="SRC", help=_INPUT_HELP)


def document_source(inputs: list[str], cfg: ReadConfig) -> DocumentSource:
    # The source logs what it skipped (empty or invalid documents) at INFO.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return DocumentSource(inputs, cfg)
