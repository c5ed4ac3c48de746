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
