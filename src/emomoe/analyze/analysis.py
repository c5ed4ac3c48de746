"""`emomoe analyze` as a library call: which experts serve which domains, for several models side by side.

    analysis = run_analysis({"emo": "runs/emo/final", "std": "runs/std/final"}, "runs/store", AnalysisConfig())
    write_analysis("runs/analysis", analysis)   # analysis.json, figures, clusters.html, report.md

Everything is checked before the first model runs: the store has at least two domains with
held-out documents, every checkpoint's vocabulary and context fit the documents, and k is at most
the number of tokens. The documents are chosen once and shared by all models. Two views of them:
whole documents (cut to `max_doc_tokens`) for the per-layer numbers, as the paper's Fig. 6; their
first `tokens_per_doc` tokens for the token clusters, as its Fig. 5 (`COMPUTED_ON` says which
numbers come from which).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from emomoe.analyze.clusters import ClusterConfig, check_num_clusters
from emomoe.analyze.collect import Documents, collect_routing, held_out_documents
from emomoe.analyze.figures import draw_figures
from emomoe.analyze.html import clusters_html
from emomoe.analyze.modularity import model_summary
from emomoe.analyze.modularity_report import HTML_FILE, REPORT_FILE, analysis_report
from emomoe.analyze.overlap import overlap_summary, read_kept_sets
from emomoe.checkpoint import check_fits, load_config, load_for_inference
from emomoe.config import ranged
from emomoe.data.store import TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.data.windows import BATCH_SIZE, TokenizerCheckConfig
from emomoe.errors import ConfigError, DataError, require
from emomoe.io import atomic_path

ANALYSIS_FILE = "analysis.json"
COMPUTED_ON = {
    "whole_documents": [
        "maps", "similarity", "mean_off_diagonal", "per_domain", "top1_domain_mi_bits", "top1_domain_nmi"
    ],
    "prefixes": ["prefix_similarity", "prefix_mean_off_diagonal", "clusters"],
}
"""Which document view each number of a model's record (its layers' fields, and `clusters`) comes from."""


@dataclasses.dataclass
class AnalysisConfig(TokenizerCheckConfig):
    domains: list[str] | None = None
    """Domains to analyse (None: every domain of the store)."""
    num_docs: int = ranged(64, ge=1)
    """Held-out documents per domain, evenly spaced over the validation split's documents of at
    least min_doc_tokens tokens."""
    min_doc_tokens: int = ranged(32, ge=1)
    """Shorter documents are left out (the paper's Fig. 6 extraction: 32)."""
    max_doc_tokens: int = ranged(2048, ge=1)
    """Whole documents are cut to their first tokens (the paper's Fig. 6 extraction: 2048). They go
    through a model of shorter context in windows of its max_seq_len."""
    tokens_per_doc: int = ranged(100, ge=1)
    """Prefix of each document the token clustering uses (the paper's first 100), also shown as
    the prefix domain similarity."""
    batch_size: int = ranged(BATCH_SIZE, ge=1)
    """Windows per forward pass."""
    clusters: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    """How tokens are clustered by their routing."""
    num_top_tokens: int = ranged(10, ge=1)
    """Most frequent tokens listed per cluster."""

    def validate(self) -> None:
        if self.min_doc_tokens > self.max_doc_tokens:
            raise ConfigError(
                f"min_doc_tokens: {self.min_doc_tokens} is more than max_doc_tokens {self.max_doc_tokens}"
            )
        if self.tokens_per_doc > self.max_doc_tokens:
            raise ConfigError(
                f"tokens_per_doc: the prefix ({self.tokens_per_doc}) is longer than max_doc_tokens {self.max_doc_tokens}"
            )


def run_analysis(
    checkpoints: dict[str, str | Path],
    store: str | Path | TokenStore,
    cfg: AnalysisConfig,
    *,
    sweep_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every number of the analysis (what `analysis.json` holds; see `write_analysis`)."""
    cfg.check()
    require("the analysis (k-means, PCA and figures)", "analysis", "sklearn", "matplotlib")
    if not checkpoints:
        raise ConfigError("checkpoints: give at least one model to analyse")
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    docs = held_out_documents(
        store, cfg.domains, num_docs=cfg.num_docs, tokens_per_doc=cfg.max_doc_tokens, min_tokens=cfg.min_doc_tokens
    )
    prefix = docs.prefix(cfg.tokens_per_doc)
    check_num_clusters(cfg.clusters, prefix.num_tokens)
    windows: dict[str, int] = {}
    for name, checkpoint in checkpoints.items():
        model_cfg = load_config(checkpoint)
        if cfg.tokens_per_doc > model_cfg.max_seq_len:
            raise ConfigError(
                f"tokens_per_doc: {cfg.tokens_per_doc} exceeds {checkpoint}'s max_seq_len {model_cfg.max_seq_len}"
            )
        windows[name] = min(cfg.max_doc_tokens, model_cfg.max_seq_len)
        check_fits(
            model_cfg, checkpoint, vocab_size=store.vocab_size, seq_len=windows[name],
            tokenizer_hash=store.tokenizer_hash, any_tokenizer=cfg.any_tokenizer,
        )
    kept = read_kept_sets(sweep_dir, checkpoints, store.path) if sweep_dir is not None else None
    decoder = load_tokenizer(store.tokenizer_path) if store.tokenizer_path is not None else None
    models: dict[str, Any] = {}
    for name, checkpoint in checkpoints.items():
        model, _ = load_for_inference(checkpoint, dtype="auto")
        bar = f"routing {name}" if progress else None
        routed = collect_routing(
            model, docs, prefix_tokens=cfg.tokens_per_doc, window=windows[name], batch_size=cfg.batch_size,
            pad_id=store.eos_id, progress=bar,
        )
        del model
        if not routed:
            raise DataError(f"{checkpoint}: has no MoE layers (no routers), so there is no routing to analyse")
        summary = model_summary(routed, docs, prefix, cfg.clusters, decoder, cfg.num_top_tokens)
        models[name] = {"checkpoint": str(checkpoint), "window": windows[name], **summary}
    analysis = {
        "settings": {
            **cfg.to_dict(), "store": str(store.path), "checkpoints": {n: str(c) for n, c in checkpoints.items()}
        },
        "domains": docs.domains,
        "computed_on": COMPUTED_ON,
        "documents": {"whole_documents": _counts(docs), "prefixes": _counts(prefix)},
        "models": models,
    }
    if kept is not None:
        num_experts = {name: [layer["num_experts"] for layer in m["layers"]] for name, m in models.items()}
        analysis["subset_overlap"] = overlap_summary(kept, num_experts)
    return analysis


def _counts(docs: Documents) -> dict[str, dict[str, int]]:
    """Documents and tokens per domain."""
    docs_Y = np.bincount(docs.domain_G, minlength=len(docs.domains))
    tokens_Y = np.bincount(docs.domain_G, weights=[len(t) for t in docs.tokens], minlength=len(docs.domains))
    return {
        name: {"num_documents": int(docs_Y[y]), "num_tokens": int(tokens_Y[y])} for y, name in enumerate(docs.domains)
    }


def write_analysis(out_dir: str | Path, analysis: dict[str, Any], *, command: str | None = None) -> Path:
    """Write `out_dir` as a whole (replacing it): analysis.json, the PNG figures, clusters.html and
    report.md. Returns the report's path."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / ANALYSIS_FILE).write_text(json.dumps(analysis, indent=2) + "\n")
        draw_figures(tmp, analysis)
        (tmp / HTML_FILE).write_text(clusters_html(analysis), encoding="utf-8")
        (tmp / REPORT_FILE).write_text(analysis_report(analysis, command=command), encoding="utf-8")
    return out_dir / REPORT_FILE
