import json
import math

import pytest
import torch

from emomoe.checkpoint import load_model
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.select.calibration import store_calibration
from emomoe.select.finetune import finetune_subset
from emomoe.select.keep import KeepSpec
from emomoe.select.subset import SELECTION_FILE, select_subset


@pytest.fixture(scope="module")
def legal_subset(tmp_path_factory, checkpoint_dir, store_dir):
    calib = store_calibration(store_dir, ["legal"], num_windows=2, seq_len=32, batch_size=2)
    out = tmp_path_factory.mktemp("sub") / "legal"
    select_subset(checkpoint_dir, out, keep=KeepSpec.parse("3"), method="global", calibration=calib)
    return out


def test_finetune_trains_the_subset_on_its_own_domain(tmp_path, legal_subset, store_dir):
    done = finetune_subset(legal_subset, store_dir, tmp_path / "ft", lr=1e-3, max_steps=3, seq_len=32, batch_size=4)
    assert done["domains"] == ["legal"] and done["num_steps"] == 3
    before, cfg = load_model(legal_subset)
    after, after_cfg = load_model(tmp_path / "ft")
    assert after_cfg == cfg
    assert not torch.equal(after.layers[0].moe.experts.w1, before.layers[0].moe.experts.w1)
    record = json.loads((tmp_path / "ft" / SELECTION_FILE).read_text())
    original = json.loads((legal_subset / SELECTION_FILE).read_text())
    assert record["kept_experts"] == original["kept_experts"]
    assert record["finetune"][-1]["num_steps"] == 3 and record["finetune"][-1]["domains"] == ["legal"]


def test_one_epoch_is_the_default_length(tmp_path, legal_subset, store_dir):
    store = TokenStore.open(store_dir)
    windows = (store.num_tokens("train", ["legal"]) - 1) // 32
    done = finetune_subset(legal_subset, store, tmp_path / "ft", seq_len=32, batch_size=8)
    assert done["num_steps"] == math.ceil(windows / 8)


def test_domains_are_needed_when_the_selection_did_not_use_the_store(tmp_path, checkpoint_dir, store_dir):
    select_subset(checkpoint_dir, tmp_path / "rand", keep=KeepSpec.parse("2"), method="random")
    with pytest.raises(ConfigError, match="name the domains"):
        finetune_subset(tmp_path / "rand", store_dir, tmp_path / "ft", max_steps=1, seq_len=32)
    assert not (tmp_path / "ft").exists()


def test_finetuning_lowers_held_out_loss_on_its_domain(tmp_path, legal_subset, store_dir):
    finetune_subset(legal_subset, store_dir, tmp_path / "ft", lr=3e-3, max_steps=20, seq_len=32, batch_size=4)
    held_out = {"domains": ["legal"], "seq_len": 32, "batch_size": 8}
    before = evaluate_checkpoint(legal_subset, store_dir, **held_out)["domains"]["legal"]["loss"]
    after = evaluate_checkpoint(tmp_path / "ft", store_dir, **held_out)["domains"]["legal"]["loss"]
    assert after < before - 0.2, (before, after)
