"""The one pass over held-out documents that every modularity metric shares.

Documents are chosen once, evenly spaced over each domain's validation documents and cut to their
first `tokens_per_doc` text tokens (the paper clusters the first 100 tokens of each document), and
the same documents go through every model. Each document is its own row starting at position 0,
routed without a pool (the HF inference behaviour, see `load_for_inference`). For every token and
MoE layer the pass keeps the routed softmax and the chosen experts; every metric is computed from
these arrays afterwards.

Legend: B batch, S sequence, T tokens, E routed experts of a layer, K experts per token, G documents.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

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

    def token_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Token id, document, position in the document and domain of every token, in pass order."""
        lengths_G = np.array([len(t) for t in self.tokens])
        doc_T = np.repeat(np.arange(len(self.tokens)), lengths_G)
        pos_T = np.arange(len(doc_T)) - np.repeat(np.cumsum(lengths_G) - lengths_G, lengths_G)
        return np.concatenate(self.tokens), doc_T, pos_T, self.domain_G[doc_T]


def held_out_documents(
    store: TokenStore, domains: list[str] | None, *, num_docs: int, tokens_per_doc: int
) -> Documents:
    """Up to `num_docs` validation documents per domain, evenly spaced, each cut to its first
    `tokens_per_doc` tokens. DataError unless at least two domains have held-out documents."""
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
        spans = [(shard, int(o), int(n)) for shard in store.shards(Split.VAL, [name]) for o, n, _ in shard.index]
        picked = [spans[i] for i in _evenly_spaced(len(spans), num_docs)]
        texts = [_first_text_tokens(shard.tokens[o : o + n], store.eos_id, tokens_per_doc) for shard, o, n in picked]
        texts = [t for t in texts if len(t)]
        if not texts:
            raise DataError(f"{store.path}: domain {name!r} has no held-out (validation) documents to analyse")
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
    """Routing of one MoE layer over every analysed token."""

    layer: int
    """Index of the block in the model."""
    probs_TE: np.ndarray
    """Softmax over the layer's routed experts (float32)."""
    experts_TK: np.ndarray
    """The routed experts each token was sent to."""

    @property
    def num_experts(self) -> int:
        return self.probs_TE.shape[1]

    @property
    def top_k(self) -> int:
        return self.experts_TK.shape[1]


@torch.inference_mode()
def collect_routing(
    model: torch.nn.Module, docs: Documents, *, batch_size: int, pad_id: int, progress: str | None = None
) -> list[RoutedLayer]:
    """Run every document through `model` (in eval mode) and keep the routing of its MoE layers.

    Rows are padded at the end; causal attention keeps padding out of the real tokens' routing.
    """
    model.eval()
    probs: dict[int, list[np.ndarray]] = {}
    experts: dict[int, list[np.ndarray]] = {}
    bar = tqdm(total=len(docs.tokens), desc=progress, disable=progress is None, unit="doc", leave=False)
    for start in range(0, len(docs.tokens), batch_size):
        rows = docs.tokens[start : start + batch_size]
        lengths_B = torch.tensor([len(r) for r in rows])
        ids_BS = torch.full((len(rows), int(lengths_B.max())), pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids_BS[b, : len(row)] = torch.from_numpy(row)
        valid_T = (torch.arange(ids_BS.shape[1])[None, :] < lengths_B[:, None]).reshape(-1)
        out = model(ids_BS, doc_ids_BS=torch.zeros_like(ids_BS), return_routing=True)
        for layer, routing in enumerate(out.routing):
            if routing.router_logits_TE.shape[1] == 0:  # a dense layer routes nothing
                continue
            logits_TE = routing.router_logits_TE[valid_T].float()
            probs.setdefault(layer, []).append(logits_TE.softmax(dim=-1).numpy())
            experts.setdefault(layer, []).append(routing.experts_TK[valid_T].numpy().astype(np.int64))
        bar.update(len(rows))
    bar.close()
    return [RoutedLayer(i, np.concatenate(probs[i]), np.concatenate(experts[i])) for i in sorted(probs)]
