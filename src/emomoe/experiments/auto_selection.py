"""How often `--selection auto` picks a held-out document's own domain, and its table.

Every domain's selection carries a calibration profile: the full model's router mass on that
domain's calibration windows (`ExpertSelector.profile`, what `select` records). A held-out
document's first n tokens choose the profile their router mass matches best
(`emomoe.model.selection`); the choice is right when that is the document's own domain. The sweep
measures it per model at several n (a document shorter than n tokens is matched on all of it);
chance is one over the number of domains.

Legend: B batch, E routed experts of a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from emomoe.analyze.collect import Documents
from emomoe.model.selection import profile_scores, prompt_mass
from emomoe.tables import markdown_table


def auto_selection_accuracy(
    model: torch.nn.Module,
    profiles: dict[str, list[torch.Tensor]],
    docs: Documents,
    prompt_tokens: Sequence[int],
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    """Prompt tokens (as text) -> the share of `docs` whose first tokens choose their own domain's
    profile (`profiles`: domain -> router mass [E] per MoE layer), that share per domain, and the
    confusion counts (true domain -> chosen domain -> documents)."""
    names = list(profiles)
    truth = [docs.domains[y] for y in docs.domain_G.tolist()]
    results = {}
    for num_tokens in prompt_tokens:
        chosen: list[str] = []
        for start in range(0, len(docs.tokens), batch_size):
            prompts = [t.tolist() for t in docs.tokens[start : start + batch_size]]
            masses = prompt_mass(model, prompts, num_tokens)
            best_B = profile_scores(masses, [profiles[d] for d in names]).argmax(dim=1)
            chosen += [names[q] for q in best_B.tolist()]
        confusion = {d: {c: 0 for c in names} for d in docs.domains}
        for true, picked in zip(truth, chosen):
            confusion[true][picked] += 1
        results[str(num_tokens)] = {
            "accuracy": sum(t == c for t, c in zip(truth, chosen)) / len(truth),
            "per_domain": {d: row.get(d, 0) / sum(row.values()) for d, row in confusion.items()},
            "confusion": confusion,
        }
    return results


def auto_selection_table(auto: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Rows: models x prompt tokens; columns: the accuracy over all documents, then per domain."""
    first = next(iter(auto.values()))
    domains = list(next(iter(first.values()))["per_domain"])
    rows = [
        [model, tokens, f"{cell['accuracy']:.3f}", *(f"{cell['per_domain'][d]:.2f}" for d in domains)]
        for model, per_tokens in auto.items()
        for tokens, cell in per_tokens.items()
    ]
    return markdown_table(["model", "prompt tokens", "right domain", *domains], rows)
