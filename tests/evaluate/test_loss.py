import math

import pytest
import torch
import torch.nn.functional as F

from emomoe.model import ModelConfig, build_model
from emomoe.train.validation import DomainLoss, loss_by_domain


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("tiny").with_overrides(["num_layers=1"])).eval()


def _batch(seed, num_domains):
    gen = torch.Generator().manual_seed(seed)
    ids_BS = torch.randint(0, 256, (3, 12), generator=gen)
    labels_BS = torch.randint(0, 256, (3, 12), generator=gen)
    labels_BS[2, 7:] = -100  # a padded final window
    domains_BS = torch.randint(0, num_domains, (3, 1), generator=gen).expand(3, 12).clone()
    return {"input_ids_BS": ids_BS, "labels_BS": labels_BS, "domain_ids_BS": domains_BS}


def test_loss_is_token_weighted_per_domain(model):
    names = ["a", "b", "c"]
    batches = [_batch(s, len(names)) for s in range(4)]
    got = loss_by_domain(model, batches, names)
    # Reference: one token at a time.
    sums, counts = [0.0] * 3, [0] * 3
    with torch.no_grad():
        for b in batches:
            logits = model(b["input_ids_BS"]).logits
            for r in range(3):
                for s in range(12):
                    label = int(b["labels_BS"][r, s])
                    if label == -100:
                        continue
                    d = int(b["domain_ids_BS"][r, s])
                    sums[d] += float(F.cross_entropy(logits[r, s][None], torch.tensor([label])))
                    counts[d] += 1
    assert set(got) == {names[d] for d in range(3) if counts[d]}
    for d, name in enumerate(names):
        if counts[d]:
            assert got[name].num_tokens == counts[d]
            assert math.isclose(got[name].loss, sums[d] / counts[d], rel_tol=1e-5)
            assert math.isclose(got[name].ppl, math.exp(sums[d] / counts[d]), rel_tol=1e-4)


def test_domain_loss_without_tokens_is_nan():
    assert math.isnan(DomainLoss().loss)
    assert DomainLoss(6.0, 3).to_dict() == {"loss": 2.0, "ppl": math.exp(2.0), "num_tokens": 3}


def test_training_mode_is_restored(model):
    model.train()
    loss_by_domain(model, [_batch(0, 1)], ["a"])
    assert model.training
    model.eval()
