"""`train.anneal_from`: a standard run continued with its whole trainer state under the EMO router,
its LR on OLMo-core's WSD decay line from the checkpoint's LR to 0."""

import pytest
import torch

from emomoe.checkpoint import load_model
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError
from emomoe.train.anneal import read_anneal_source
from emomoe.train.checkpointing import load_trainer_state, step_dir_name
from emomoe.train.config import RunConfig
from emomoe.train.metrics import read_metrics
from emomoe.train.trainer import Trainer, fit_to_store, train

SOURCE_STEPS = 6
SOURCE_LR = 4e-3
FLOOR_LR = 0.1 * SOURCE_LR
"""Where the source run's cosine ends: its checkpoint's LR, the anneal's start."""


@pytest.fixture(scope="module")
def std_run(tmp_path_factory, tiny_store):
    from tests.train.conftest import tiny_run_config

    cfg = tiny_run_config(
        tiny_store, "model.moe.router.pool=off", f"train.max_steps={SOURCE_STEPS}", f"train.lr={SOURCE_LR}",
        "train.final_lr_ratio=0.1", "train.checkpoint_every=3",
    )
    run = tmp_path_factory.mktemp("std") / "run"
    train(cfg, run, progress=False)
    return run


def anneal_config(run_config, std_run, *overrides):
    # The tiny preset routes with an EMO pool: the anneal switches the standard run's router to EMO.
    return run_config(f"train.anneal_from={std_run}", "train.max_steps=10", *overrides)


def test_the_anneal_starts_from_the_checkpoints_weights_adam_moments_step_and_data(run_config, std_run, tmp_path):
    cfg = anneal_config(run_config, std_run, "train.lr=1.0")  # train.lr does not apply
    store = TokenStore.open(cfg.data.store)
    checkpoint = std_run / "checkpoints" / step_dir_name(SOURCE_STEPS)
    saved = load_trainer_state(checkpoint)
    trainer = Trainer(
        fit_to_store(cfg, store), tmp_path / "run", store, torch.device("cpu"),
        resume_from=read_anneal_source(std_run), anneal=True,
    )
    assert trainer.step == SOURCE_STEPS and trainer.tokens_seen == saved["tokens_seen"]
    assert trainer.loader.position == saved["ranks"][0]["loader"]["position"]
    source, _ = load_model(checkpoint)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in trainer.plain_model.state_dict().items())
    names = dict(zip(map(id, trainer.plain_model.parameters()), (n for n, _ in trainer.plain_model.named_parameters())))
    moments = {names[id(p)]: s for p, s in trainer.optimizer.state.items()}
    assert moments.keys() == saved["optimizer"]["state"].keys()
    for name, state in moments.items():
        want = saved["optimizer"]["state"][name]
        assert float(state["step"]) == float(want["step"]) == SOURCE_STEPS
        assert torch.equal(state["exp_avg"], want["exp_avg"]) and torch.equal(state["exp_avg_sq"], want["exp_avg_sq"])
    assert trainer.plain_model.layers[0].moe.router.train_pool == (2, 8)  # the router is EMO now
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(FLOOR_LR * 3 / 4)  # update 7 of 6..10


def test_the_lr_falls_from_the_checkpoints_lr_to_zero_on_the_last_update(run_config, std_run, tmp_path):
    # WSD with warmup = 6 (the checkpoint's step), decay to step 10: update u at FLOOR_LR * (10 - u) / 4.
    result = train(anneal_config(run_config, std_run), tmp_path / "anneal", progress=False)
    records = read_metrics(tmp_path / "anneal" / "metrics.jsonl")
    assert [r["step"] for r in records] == [7, 8, 9, 10] and result.first_step == SOURCE_STEPS
    assert [r["lr"] for r in records] == pytest.approx([FLOOR_LR * f for f in (0.75, 0.5, 0.25, 0.0)])
    assert load_model(result.final_dir)[1].moe.router.pool == "2..8"


def test_a_resumed_anneal_stays_on_the_line_from_the_checkpoint(run_config, std_run, tmp_path):
    train(anneal_config(run_config, std_run, "train.max_steps=8", "train.checkpoint_every=1"), tmp_path / "a", progress=False)
    longer = anneal_config(run_config, std_run, "train.max_steps=11")
    train(longer, tmp_path / "a", resume=True, progress=False)
    records = read_metrics(tmp_path / "a" / "metrics.jsonl")
    # The new end moves the line's end, not its start: update u at FLOOR_LR * (11 - u) / 5.
    assert [r["lr"] for r in records if r["step"] > 8] == pytest.approx([FLOOR_LR * f for f in (0.4, 0.2, 0.0)])


def test_an_anneal_must_run_past_the_checkpoints_step(run_config, std_run, tmp_path):
    with pytest.raises(ConfigError, match=r"train.max_steps: 6 must be more than the step of train.anneal_from's checkpoint \(6\)"):
        train(anneal_config(run_config, std_run, "train.max_steps=6"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_anneal_from_names_a_run_or_a_checkpoint(run_config, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is neither a run directory nor a training checkpoint"):
        train(run_config(f"train.anneal_from={tmp_path / 'empty'}"), tmp_path / "run", progress=False)


def test_an_anneal_keeps_the_architecture(run_config, std_run, tmp_path):
    with pytest.raises(ConfigError, match=r"train.anneal_from: .*step-00000006 holds a different architecture: model.num_layers is 2 there, 3 here$"):
        train(anneal_config(run_config, std_run, "model.num_layers=3"), tmp_path / "run", progress=False)


def test_init_from_and_anneal_from_exclude_each_other(run_config, std_run):
    with pytest.raises(ConfigError, match="init_from, anneal_from: expected at most one"):
        RunConfig.from_dict(anneal_config(run_config, std_run, f"train.init_from={std_run}").to_dict())
