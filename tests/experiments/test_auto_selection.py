import numpy as np
import pytest
import torch

from emomoe.analyze.collect import Documents
from emomoe.experiments.auto_selection import auto_selection_accuracy, auto_selection_table
from emomoe.model import build_model
from tests.fixtures import tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    cfg = tiny_config().with_overrides(["moe.router.eval_pool=off"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.layers:
            block.moe.router.gate.weight.mul_(20.0)
    return model


def _mass_by_hand(model, ids, num_tokens):
    with torch.no_grad():
        routing = model(torch.tensor([ids[:num_tokens]]), return_routing=True).routing
    return [r.router_logits_TE.softmax(-1).mean(0).double() for r in routing]


def test_accuracy_and_confusion_follow_a_document_by_document_choice(model):
    gen = torch.Generator().manual_seed(0)
    # Domain "low" draws its tokens below 100, "high" above 400: their routing differs.
    tokens = [torch.randint(lo, lo + 100, (n,), generator=gen).numpy() for lo, n in
              [(0, 30), (0, 5), (0, 12), (400, 30), (400, 9), (400, 20)]]
    docs = Documents(["low", "high"], tokens, np.array([0, 0, 0, 1, 1, 1]))
    profiles = {
        "high": _mass_by_hand(model, tokens[3].tolist(), 30),  # profiles in another order than the domains
        "low": _mass_by_hand(model, tokens[0].tolist(), 30),
    }
    got = auto_selection_accuracy(model, profiles, docs, [4, 16], batch_size=4)
    for num_tokens in (4, 16):
        confusion = {"low": {"high": 0, "low": 0}, "high": {"high": 0, "low": 0}}
        for ids, y in zip(tokens, docs.domain_G):
            mass = _mass_by_hand(model, ids.tolist(), num_tokens)
            scores = {d: sum(float((m * p.clamp(min=1e-12).log()).sum()) for m, p in zip(mass, profile))
                      for d, profile in profiles.items()}
            confusion[docs.domains[y]][max(scores, key=scores.get)] += 1
        cell = got[str(num_tokens)]
        assert cell["confusion"] == confusion
        assert cell["accuracy"] == pytest.approx((confusion["low"]["low"] + confusion["high"]["high"]) / 6)
        assert cell["per_domain"] == {d: pytest.approx(confusion[d][d] / 3) for d in ("low", "high")}
    assert got["16"]["accuracy"] > 0.5  # the two domains are told apart


def test_the_table_has_a_row_per_model_and_prompt_length():
    cell = {"accuracy": 0.75, "per_domain": {"code": 1.0, "legal": 0.5}, "confusion": {}}
    table = auto_selection_table({"emo": {"16": cell, "32": cell}, "std": {"16": cell}})
    lines = table.splitlines()
    assert lines[0] == "| model | prompt tokens | right domain | code | legal |"
    assert lines[2:] == ["| emo | 16 | 0.750 | 1.00 | 0.50 |", "| emo | 32 | 0.750 | 1.00 | 0.50 |",
                         "| std | 16 | 0.750 | 1.00 | 0.50 |"]
