import pytest
import torch

from emomoe.checkpoint import load_model, save_model
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError, DataError
from emomoe.train.checkpointing import CheckpointManager
from emomoe.train.config import RunConfig
from emomoe.train.metrics import read_metrics
from emomoe.train.trainer import Trainer, fit_to_store, train

ANNEAL = ("train.schedule=linear", "train.warmup_steps=0", "train.final_lr_ratio=0", "train.lr=1e-3")


@pytest.fixture(scope="module")
def std_final(tmp_path_factory, tiny_store):
    from tests.train.conftest import tiny_run_config

    cfg = tiny_run_config(tiny_store, "model.moe.router.pool=off", "train.max_steps=3")
    return train(cfg, tmp_path_factory.mktemp("std") / "run", progress=False).final_dir


def equal_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_run_starts_from_the_weights_with_a_fresh_optimizer_schedule_and_data(run_config, std_final, tmp_path):
    cfg = run_config(f"train.init_from={std_final}", *ANNEAL)  # the tiny preset has an EMO pool
    store = TokenStore.open(cfg.data.store)
    trainer = Trainer(fit_to_store(cfg, store), tmp_path / "run", store, torch.device("cpu"))
    source, _ = load_model(std_final)
    assert equal_weights(trainer.plain_model, source)
    assert trainer.step == 0 and trainer.loader.position == 0 and not trainer.optimizer.state
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 5 / 6)  # update 1 of a linear decay over 6
    assert trainer.plain_model.layers[0].moe.router.train_pool == (2, 8)


def test_a_weights_only_anneal_of_a_standard_checkpoint_decays_the_lr_to_zero(run_config, std_final, tmp_path):
    cfg = run_config(f"train.init_from={std_final}", *ANNEAL, "train.max_steps=4")
    result = train(cfg, tmp_path / "anneal", progress=False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "anneal" / "metrics.jsonl")]
    assert lrs == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 0.0])
    annealed, _ = load_model(result.final_dir)
    source, _ = load_model(std_final)
    assert not equal_weights(annealed, source)
    assert RunConfig.from_yaml(tmp_path / "anneal" / "config.yaml").train.init_from == str(std_final)


def test_resume_takes_the_runs_own_checkpoint_not_init_from(run_config, std_final, tmp_path):
    cfg = run_config(f"train.init_from={std_final}", "train.max_steps=2", "train.checkpoint_every=2")
    train(cfg, tmp_path / "run", progress=False)
    trained, _ = load_model(tmp_path / "run" / "final")
    longer = cfg.with_overrides(["train.max_steps=3"])
    store = TokenStore.open(cfg.data.store)
    restored = CheckpointManager(tmp_path / "run", 2).restore_newest()
    trainer = Trainer(fit_to_store(longer, store), tmp_path / "run", store, torch.device("cpu"), resume_from=restored)
    assert trainer.step == 2 and equal_weights(trainer.plain_model, trained)


def test_any_readable_checkpoint_layout_works(run_config, std_final, tmp_path):
    model, model_cfg = load_model(std_final)
    save_model(tmp_path / "sharded", model, model_cfg, max_shard_bytes=20_000)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    cfg = run_config(f"train.init_from={tmp_path / 'sharded'}")
    store = TokenStore.open(cfg.data.store)
    trainer = Trainer(fit_to_store(cfg, store), tmp_path / "run", store, torch.device("cpu"))
    assert equal_weights(trainer.plain_model, model)


def test_a_different_architecture_is_refused_before_anything_is_written(run_config, std_final, tmp_path):
    cfg = run_config(f"train.init_from={std_final}", "model.moe.expert_hidden_size=48")
    with pytest.raises(ConfigError, match=r"init_from: .* model\.moe\.expert_hidden_size is 32 there, 48 here"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="no such checkpoint"):
        train(run_config(f"train.init_from={tmp_path / 'missing'}"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
