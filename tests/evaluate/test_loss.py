import math

import pytest
import torch
import torch.nn.functional as F

from emomoe.checkpoint import load_for_inference
from emomoe.checkpoint.selection import read_selection
from emomoe.data.loader import eval_batches
from emomoe.data.store import TokenStore
from emomoe.evaluate.loss import evaluate_checkpoint
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


def test_a_selection_on_the_full_model_gives_the_sliced_subsets_loss(store_dir, checkpoint_dir, domain_subsets):
    subset = domain_subsets["code"]
    sliced = evaluate_checkpoint(subset, store_dir, seq_len=64, num_eval_windows=4)
    masked = evaluate_checkpoint(checkpoint_dir, store_dir, seq_len=64, num_eval_windows=4, selection=[str(subset)])
    full = evaluate_checkpoint(checkpoint_dir, store_dir, seq_len=64, num_eval_windows=4)
    assert masked["selection"] == [str(subset)] and "chosen" not in masked
    for domain, expected in sliced["domains"].items():
        assert masked["domains"][domain]["num_tokens"] == expected["num_tokens"]
        assert masked["domains"][domain]["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        # Untrained, the restriction moves the loss little, but far more than rounding does.
        assert abs(full["domains"][domain]["loss"] - expected["loss"]) > 1e-6


def _choose_by_hand(model, ids_S, profiles, num_tokens):
    """Reference: the domain whose profile gives the prompt's mean router probabilities the
    highest sum of m log q, one layer at a time."""
    with torch.no_grad():
        routing = model(ids_S[None, :num_tokens], return_routing=True).routing
    scores = {}
    for domain, profile in profiles.items():
        scores[domain] = sum(
            float((r.router_logits_TE.softmax(-1).mean(0).double() * torch.tensor(q).clamp(min=1e-12).log()).sum())
            for r, q in zip(routing, profile)
        )
    return max(scores, key=scores.get)


def test_auto_runs_every_window_with_the_subset_its_first_tokens_choose(store_dir, checkpoint_dir, domain_subsets):
    store = TokenStore.open(store_dir)
    spec = ["auto", *(str(p) for p in domain_subsets.values())]
    got = evaluate_checkpoint(checkpoint_dir, store_dir, seq_len=64, num_eval_windows=4, selection=spec, auto_tokens=16)
    full, _ = load_for_inference(checkpoint_dir)
    profiles = {d: read_selection(p)["router_profile"] for d, p in domain_subsets.items()}
    subsets = {d: load_for_inference(p)[0] for d, p in domain_subsets.items()}
    sums, chosen = {}, {}
    for batch in eval_batches(store, "val", seq_len=64, batch_size=8, max_windows_per_domain=4):
        for row in range(batch["input_ids_BS"].shape[0]):
            window = {key: value[row : row + 1] for key, value in batch.items()}
            picked = _choose_by_hand(full, window["input_ids_BS"][0], profiles, 16)
            domain = store.domains[int(window["domain_ids_BS"][0, 0])]
            chosen.setdefault(domain, {}).setdefault(picked, 0)
            chosen[domain][picked] += 1
            loss = loss_by_domain(subsets[picked], [window], store.domains)[domain]
            total = sums.setdefault(domain, [0.0, 0])
            total[0], total[1] = total[0] + loss.sum_nats, total[1] + loss.num_tokens
    assert got["chosen"] == chosen
    assert len({picked for per_domain in chosen.values() for picked in per_domain}) > 1  # a real choice
    for domain, (nats, tokens) in sums.items():
        assert got["domains"][domain]["num_tokens"] == tokens
        assert got["domains"][domain]["loss"] == pytest.approx(nats / tokens, rel=1e-6)
