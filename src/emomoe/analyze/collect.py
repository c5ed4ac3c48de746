"""The one pass over held-out documents that every modularity metric shares.

Documents are chosen once, evenly spaced over each domain's validation documents of at least
`min_tokens` text tokens, each cut to its first `max_tokens`, and the same documents go through
every model. Two views of them (see `AnalysisConfig`): whole documents, whose per-document routing
vectors make the domain maps and the paper's Fig. 6 (its extraction pools 32-2048-token documents),
and every document's first `prefix_tokens` tokens, whose per-token routing the token clustering
uses (the paper clusters the first 100 tokens of each document).

A document goes through a model in windows of the model's context, each its own row starting at
position 0 and routed without a pool (the HF inference behaviour, see `load_for_inference`); the
first window holds the prefix. Whole documents keep only sums per document (memory grows with the
documents, not their tokens); the prefix tokens keep their routed softmax and chosen experts.

Legend: B batch, S sequence, T tokens, E routed experts of a layer, K experts per token, G documents.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from emomoe.analyze.metrics import document_sums
from emomoe.data.store import Split, TokenStore
from emomoe.errors import DataError


@dataclasses.dataclass
class Documents:
    """The analysed documents: token ids (no EOS) and the index of their domain in `domains`."""

    domains: list[str]
    tokens: list[np.ndarray]
    domain_G: np.ndarray

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    def prefix(self, num_tokens: int) -> Documents:
        """The same documents cut to their first `num_tokens` tokens."""
        return Documents(self.domains, [t[:num_tokens] for t in self.tokens], self.domain_G)

    def token_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Token id, document, position in the document and domain of every token, in pass order."""
        lengths_G = np.array([len(t) for t in self.tokens])
        doc_T = np.repeat(np.arange(len(self.tokens)), lengths_G)
        pos_T = np.arange(len(doc_T)) - np.repeat(np.cumsum(lengths_G) - lengths_G, lengths_G)
        return np.concatenate(self.tokens), doc_T, pos_T, self.domain_G[doc_T]


def held_out_documents(
    store: TokenStore, domains: list[str] | None, *, num_docs: int, tokens_per_doc: int, min_tokens: int = 1
) -> Documents:
    """Up to `num_docs` validation documents per domain of at least `min_tokens` text tokens, evenly
    spaced, each cut to its first `tokens_per_doc` tokens. DataError unless at least two domains
    have such documents."""
    names = domains or store.domains
    store.domain_ids(names)
    if len(names) < 2:
        raise DataError(
            f"{store.path}: the analysis compares domains, but the store has only {len(names)} "
            f"({', '.join(names) or 'none'}); tokenize a corpus with a domain label per document (--domain-field)"
        )
    tokens: list[np.ndarray] = []
    domain_G: list[int] = []
    for y, name in enumerate(names):
        # The index counts the closing EOS: a document of n entries has n - 1 text tokens (or n without EOS).
        spans = [
            (shard, int(o), int(n))
            for shard in store.shards(Split.VAL, [name]) for o, n, _ in shard.index if n - 1 >= min_tokens
        ]
        picked = [spans[i] for i in _evenly_spaced(len(spans), num_docs)]
        texts = [_first_text_tokens(shard.tokens[o : o + n], store.eos_id, tokens_per_doc) for shard, o, n in picked]
        texts = [t for t in texts if len(t) >= min_tokens]
        if not texts:
            at_least = f" of at least {min_tokens} tokens" if min_tokens > 1 else ""
            raise DataError(f"{store.path}: domain {name!r} has no held-out (validation) documents{at_least} to analyse")
        tokens += texts
        domain_G += [y] * len(texts)
    return Documents(list(names), tokens, np.array(domain_G, dtype=np.int64))


def _evenly_spaced(available: int, wanted: int) -> list[int]:
    if wanted >= available:
        return list(range(available))
    return np.linspace(0, available - 1, wanted).round().astype(int).tolist()


def _first_text_tokens(doc: np.ndarray, eos_id: int, num_tokens: int) -> np.ndarray:
    """The first `num_tokens` tokens of a document without the EOS that ends it (read from disk: only those)."""
    ids = np.asarray(doc[: num_tokens + 1], dtype=np.int64)
    if len(ids) == len(doc) and len(ids) and ids[-1] == eos_id:
        ids = ids[:-1]
    return ids[:num_tokens]


@dataclasses.dataclass
class RoutedLayer:
    """Routing of one MoE layer: per whole document, and per token of the document prefixes."""

    layer: int
    """Index of the block in the model."""
    doc_probs_GE: np.ndarray
    """Mean routed softmax over every token of each whole document (rows sum to 1)."""
    doc_topk_freq_GE: np.ndarray
    """Top-k selections of every expert per token of each whole document (rows sum to K)."""
    doc_top1_GE: np.ndarray
    """Tokens of each whole document whose highest routed probability is the expert's."""
    prefix_probs_TE: np.ndarray
    """Softmax over the layer's routed experts of every prefix token (float32), in document order."""
    prefix_experts_TK: np.ndarray
    """The routed experts each prefix token was sent to."""

    @property
    def num_experts(self) -> int:
        return self.prefix_probs_TE.shape[1]

    @property
    def top_k(self) -> int:
        return self.prefix_experts_TK.shape[1]


def windows(docs: Documents, length: int) -> list[tuple[int, int]]:
    """(document, start) of every `length`-token window of every document, in document order."""
    return [(g, start) for g, tokens in enumerate(docs.tokens) for start in range(0, len(tokens), length)]


class _LayerSums:
    """What one layer's pass keeps: sums per whole document, and the prefix tokens' routing."""

    def __init__(self, num_docs: int, num_experts: int):
        self.probs_GE = np.zeros((num_docs, num_experts))
        self.picks_GE = np.zeros((num_docs, num_experts))
        self.top1_GE = np.zeros((num_docs, num_experts))
        self.prefix_probs: list[np.ndarray] = []
        self.prefix_experts: list[np.ndarray] = []

    def add(self, probs_TE: np.ndarray, experts_TK: np.ndarray, doc_T: np.ndarray, in_prefix_T: np.ndarray) -> None:
        probs_GE, picks_GE = document_sums(probs_TE, experts_TK, doc_T, len(self.probs_GE))
        self.probs_GE += probs_GE
        self.picks_GE += picks_GE
        np.add.at(self.top1_GE, (doc_T, probs_TE.argmax(axis=1)), 1.0)
        self.prefix_probs.append(probs_TE[in_prefix_T])
        self.prefix_experts.append(experts_TK[in_prefix_T])

    def result(self, layer: int, lengths_G: np.ndarray) -> RoutedLayer:
        lengths_G1 = np.maximum(lengths_G, 1)[:, None].astype(np.float64)
        return RoutedLayer(
            layer, self.probs_GE / lengths_G1, self.picks_GE / lengths_G1, self.top1_GE,
            np.concatenate(self.prefix_probs), np.concatenate(self.prefix_experts),
        )


@torch.inference_mode()
def collect_routing(
    model: torch.nn.Module,
    docs: Documents,
    *,
    prefix_tokens: int,
    window: int,
    batch_size: int,
    pad_id: int,
    progress: str | None = None,
) -> list[RoutedLayer]:
    """Run every document through `model` (in eval mode) in `window`-token rows and keep the
    routing of its MoE layers: per whole document, and per token of its first `prefix_tokens`
    (at most `window`, so that the prefix is read from the document's start).

    Rows are padded at the end; causal attention keeps padding out of the real tokens' routing.
    """
    assert prefix_tokens <= window
    model.eval()
    rows_R = windows(docs, window)
    sums: dict[int, _LayerSums] = {}
    bar = tqdm(total=len(rows_R), desc=progress, disable=progress is None, unit="window", leave=False)
    for first in range(0, len(rows_R), batch_size):
        rows = rows_R[first : first + batch_size]
        pieces = [docs.tokens[g][start : start + window] for g, start in rows]
        lengths_B = torch.tensor([len(p) for p in pieces])
        ids_BS = torch.full((len(rows), int(lengths_B.max())), pad_id, dtype=torch.long)
        for b, piece in enumerate(pieces):
            ids_BS[b, : len(piece)] = torch.from_numpy(piece)
        valid_BS = torch.arange(ids_BS.shape[1])[None, :] < lengths_B[:, None]
        valid_T = valid_BS.reshape(-1)
        doc_T = np.repeat([g for g, _ in rows], lengths_B.numpy())
        pos_T = np.concatenate([start + np.arange(len(p)) for (_, start), p in zip(rows, pieces)])
        out = model(ids_BS, doc_ids_BS=torch.zeros_like(ids_BS), return_routing=True)
        for layer, routing in enumerate(out.routing):
            if routing.router_logits_TE.shape[1] == 0:  # a dense layer routes nothing
                continue
            probs_TE = routing.router_logits_TE[valid_T].float().softmax(dim=-1).numpy()
            experts_TK = routing.experts_TK[valid_T].numpy().astype(np.int64)
            layer_sums = sums.setdefault(layer, _LayerSums(len(docs.tokens), probs_TE.shape[1]))
            layer_sums.add(probs_TE, experts_TK, doc_T, pos_T < prefix_tokens)
        bar.update(len(rows))
    bar.close()
    lengths_G = np.array([len(t) for t in docs.tokens])
    return [sums[i].result(i, lengths_G) for i in sorted(sums)]
