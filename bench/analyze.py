"""`emomoe analyze` on the demo models: wall time of the analysis and routed tokens per second.

With a finished demo (runs/demo, or --demo DIR) it analyses both demo models on their store, as
`make demo` does. Without one it builds a stand-in: a store of the first documents of every
embedded-corpus domain (1k-token BPE) and two random-weight `small` models. Times are wall-clock
on a shared machine; compare within a run. Prints one JSON object.

    python bench/analyze.py                    # runs/demo if finished, else the stand-in
    python bench/analyze.py --quick            # 8 documents of up to 128 tokens per domain, k = 8
    python bench/analyze.py --demo /tmp/demo
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from emomoe.analyze.analysis import AnalysisConfig, run_analysis, write_analysis
from emomoe.analyze.modularity import headline
from emomoe.checkpoint import save_model
from emomoe.data.corpus import embedded_corpus, embedded_manifest
from emomoe.data.store import TokenStore
from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer
from emomoe.model import ModelConfig, build_model


def stand_in(root: Path, docs_per_domain: int) -> tuple[dict[str, Path], TokenStore]:
    """A small store of real text and two random `small` models that fit it."""
    counts = dict.fromkeys(embedded_manifest()["domains"], 0)
    docs = []
    for doc in embedded_corpus():  # one pass, stopping once every domain has its documents
        if counts[doc["domain"]] < docs_per_domain:
            counts[doc["domain"]] += 1
            docs.append(doc)
            if all(n == docs_per_domain for n in counts.values()):
                break
    tokenizer = train_tokenizer((d["text"] for d in docs), vocab_size=1024)
    store = tokenize_corpus(docs, tokenizer, root / "store", val_fraction=0.25, progress=False)
    checkpoints = {}
    for seed, (name, pool) in enumerate((("emo", "4..32"), ("std", "off"))):
        torch.manual_seed(seed)
        cfg = ModelConfig.preset("small").with_overrides([f"vocab_size={store.vocab_size}", f"moe.router.pool={pool}"])
        checkpoints[name] = save_model(root / name, build_model(cfg), cfg)
    return checkpoints, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 documents of up to 128 tokens per domain, k = 8")
    parser.add_argument("--demo", default="runs/demo", help="a finished `emomoe demo` directory (default runs/demo)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    demo = Path(args.demo)
    settings = {"num_docs": 8, "tokens_per_doc": 64, "max_doc_tokens": 128, "clusters": {"num_clusters": 8}} if (
        args.quick
    ) else {"tokens_per_doc": 256}
    cfg = AnalysisConfig.from_dict(settings)
    with tempfile.TemporaryDirectory() as tmp:
        if (demo / "emo" / "final").is_dir() and (demo / "std" / "final").is_dir():
            checkpoints, store = {n: demo / n / "final" for n in ("emo", "std")}, TokenStore.open(demo / "store")
            source = str(demo)
        else:
            checkpoints, store = stand_in(Path(tmp), docs_per_domain=40 if args.quick else 120)
            source = "stand-in: random `small` models, embedded-corpus store (1k vocab)"
        started = time.perf_counter()
        analysis = run_analysis(checkpoints, store, cfg, progress=False)
        analysis_s = time.perf_counter() - started
        started = time.perf_counter()
        write_analysis(Path(tmp) / "analysis", analysis)
        write_s = time.perf_counter() - started
    num_tokens = sum(d["num_tokens"] for d in analysis["documents"]["whole_documents"].values())
    print(json.dumps({
        "models": source,
        "num_documents": sum(d["num_documents"] for d in analysis["documents"]["whole_documents"].values()),
        "num_tokens_per_model": num_tokens,
        "analysis_wall_s": round(analysis_s, 2),
        "tokens_per_s": round(num_tokens * len(checkpoints) / analysis_s, 1),
        "write_wall_s": round(write_s, 2),
        "total_wall_s": round(analysis_s + write_s, 2),
        "headline": {name: {k: round(v, 4) for k, v in headline(m).items()} for name, m in analysis["models"].items()},
    }))


if __name__ == "__main__":
    main()
