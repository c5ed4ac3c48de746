import pytest
import torch

from emomoe.data.loader import eval_batches
from emomoe.data.store import TokenStore
from emomoe.model import build_model
from emomoe.train import validation
from emomoe.train.validation import Validator, loss_by_domain


@pytest.fixture
def model_and_store(run_config, tiny_store):
    cfg = run_config()
    torch.manual_seed(0)
    return build_model(cfg.model.with_overrides([f"eos_id={TokenStore.open(tiny_store).eos_id}"])), TokenStore.open(tiny_store)


def test_token_weighted_losses_per_domain(model_and_store):
    model, store = model_and_store
    got = Validator(store, seq_len=32, batch_size=4, num_windows_per_domain=0)(model, torch.device("cpu"))
    direct = loss_by_domain(model, eval_batches(store, "val", seq_len=32, batch_size=4), store.domains)
    assert set(got) == {f"val/{d}" for d in direct} | {"val/all"}
    for domain, loss in direct.items():
        assert got[f"val/{domain}"] == pytest.approx(loss.loss)
    total = sum(d.sum_nats for d in direct.values()) / sum(d.num_tokens for d in direct.values())
    assert got["val/all"] == pytest.approx(total)


def test_window_limit_and_rank_share(model_and_store, monkeypatch):
    model, store = model_and_store
    validator = Validator(store, seq_len=32, batch_size=2, num_windows_per_domain=3)
    assert sum(b["input_ids_BS"].shape[0] for b in validator.batches) <= 3 * len(store.domains)
    # Pretend to be rank 1 of 2: every rank gets ceil(n/2) batches, the shortfall fully ignored.
    monkeypatch.setattr(validation.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(validation.distributed, "get_world_size", lambda: 2)
    share = validation._rank_share(validator.batches)
    assert len(share) == -(-len(validator.batches) // 2)
    assert share[0] is validator.batches[1]
    if len(validator.batches) % 2:
        assert (share[-1]["labels_BS"] == -100).all()


def test_one_domain_and_mixed_batches_give_the_losses_of_a_per_token_loop(model_and_store):
    model, store = model_and_store
    model.eval()
    windows = list(eval_batches(store, "val", seq_len=32, batch_size=1))
    by_domain = {}
    for w in windows:
        by_domain.setdefault(int(w["domain_ids_BS"][0, 0]), []).append(w)
    first, second = list(by_domain.values())[:2]
    join = lambda ws: {k: torch.cat([w[k] for w in ws]) for k in ws[0]}
    batches = [join(first[:3]), join([first[3], second[0]]), join(second[1:3])]  # one domain, mixed, one domain
    expected_sums, expected_counts = {}, {}
    with torch.no_grad():
        for b in batches:
            logits_BSV = model(b["input_ids_BS"], doc_ids_BS=b.get("doc_ids_BS")).logits
            for row in range(b["input_ids_BS"].shape[0]):
                for pos in range(b["input_ids_BS"].shape[1]):
                    label = int(b["labels_BS"][row, pos])
                    if label == -100:
                        continue
                    domain = store.domains[int(b["domain_ids_BS"][row, pos])]
                    nll = -float(logits_BSV[row, pos].double().log_softmax(-1)[label])
                    expected_sums[domain] = expected_sums.get(domain, 0.0) + nll
                    expected_counts[domain] = expected_counts.get(domain, 0) + 1
    got = loss_by_domain(model, batches, store.domains)
    assert {d: loss.num_tokens for d, loss in got.items()} == expected_counts
    for domain, loss in got.items():
        assert loss.sum_nats == pytest.approx(expected_sums[domain], rel=1e-5)
