"""Data pipeline throughput on the embedded corpus: tokenizer training, tokenizing, batches.

Encoding is measured twice side by side, serial and with `encode_batch` on every core, and
reported as a ratio, since the machine is shared. Prints one JSON object.

    python bench/data.py            # the whole embedded corpus (~38 MB)
    python bench/data.py --quick    # about 4 MB of it
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from emomoe.data.corpus import embedded_corpus
from emomoe.data.loader import DataConfig, TrainLoader
from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer


def _encode_seconds(tok, texts: list[str], parallel: bool) -> float:
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
    start = time.perf_counter()
    for i in range(0, len(texts), 256):
        tok.encode_batch(texts[i : i + 256])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="use about 4 MB of text")
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()
    limit = 4 << 20 if args.quick else None
    docs, size = [], 0
    for doc in embedded_corpus():
        docs.append(doc)
        size += len(doc["text"].encode("utf-8"))
        if limit is not None and size >= limit:
            break
    texts = [d["text"] for d in docs]

    start = time.perf_counter()
    tok = train_tokenizer(texts, args.vocab_size)
    train_s = time.perf_counter() - start
    serial_s = _encode_seconds(tok, texts, parallel=False)
    parallel_s = _encode_seconds(tok, texts, parallel=True)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store = tokenize_corpus(docs, tok, Path(tmp) / "store", progress=False)
        tokenize_s = time.perf_counter() - start
        loader = TrainLoader(store, DataConfig(seq_len=256, batch_size=16))
        start = time.perf_counter()
        num_batches = 200
        for _ in range(num_batches):
            next(loader)
        batch_s = (time.perf_counter() - start) / num_batches
        num_tokens = store.num_tokens("train") + store.num_tokens("val")

    print(json.dumps({
        "text_mb": round(size / 2**20, 2),
        "num_documents": len(docs),
        "num_tokens": num_tokens,
        "tokenizer_train_s": round(train_s, 2),
        "tokenize_s": round(tokenize_s, 2),
        "tokenize_mb_per_s": round(size / 2**20 / tokenize_s, 2),
        "encode_speedup_all_cores_vs_serial": round(serial_s / parallel_s, 2),
        "loader_batch_ms_16x256": round(batch_s * 1e3, 3),
    }))


if __name__ == "__main__":
    main()
