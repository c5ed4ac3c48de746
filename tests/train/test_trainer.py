import math

import pytest
import torch
from safetensors.torch import load_file

from emomoe.checkpoint import WEIGHTS_FILE, load_model
from emomoe.cli import main
from emomoe.data.loader import TrainLoader
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError
from emomoe.train import trainer as trainer_module
from emomoe.train.checkpointing import CheckpointManager, read_checkpoint
from emomoe.train.config import RunConfig
from emomoe.train.flops import train_flops_per_token
from emomoe.train.metrics import TIMING_KEYS, read_metrics
from emomoe.train.schedule import lr_multiplier
from emomoe.train.trainer import Trainer, TrainingDiverged, TrainingInterrupted, fit_to_store, train
from tests.fixtures import disk_full_error, fill_disk, small_tmpfs

LOSS_FIELDS = ("ce", "lb", "router_z", "logit_z", "total", "grad_norm", "lr", "tokens_per_s", "mfu")
ROUTING_FIELDS = ("load_max_over_mean", "dead_experts", "token_entropy", "doc_entropy", "experts_per_doc")


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def weights(directory):
    return load_file(str(directory / WEIGHTS_FILE))


def test_run_writes_config_metrics_checkpoints_and_final_model(run_config, tmp_path):
    cfg = run_config("train.checkpoint_every=2", "train.num_checkpoints_kept=2")
    result = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"

    assert result.step == 6 and set(result.val_loss) >= {"all", "code", "prose"}
    stored = RunConfig.from_yaml(run / "config.yaml")
    store = TokenStore.open(cfg.data.store)
    assert stored.model.eos_id == store.eos_id and stored.model.tokenizer_hash == store.tokenizer_hash
    stored.model.eos_id, stored.model.tokenizer_hash = cfg.model.eos_id, cfg.model.tokenizer_hash
    assert stored == cfg  # the EOS id and tokenizer from the store are the only changes

    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    for r in records:
        assert all(math.isfinite(r[k]) for k in LOSS_FIELDS)
        assert r["tokens"] == r["step"] * tokens_per_step
        assert r["lr"] == pytest.approx(cfg.train.lr * lr_multiplier(r["step"] - 1, cfg.train))
        has_routing = (r["step"] - 1) % cfg.train.log_every == 0
        for layer in range(cfg.model.num_layers):
            assert all((f"routing/layer{layer}/{k}" in r) == has_routing for k in ROUTING_FIELDS)
        assert ("val/all" in r) == (r["step"] % cfg.train.eval_every == 0)
    assert records[-1]["val/all"] == pytest.approx(result.val_loss["all"])

    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-00000004", "step-00000006"]
    model, model_cfg = load_model(result.final_dir)
    assert model_cfg == RunConfig.from_yaml(run / "config.yaml").model
    final, last = weights(result.final_dir), weights(run / "checkpoints" / "step-00000006")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


# An LB window's counts of the steps before the interrupt are training state, like the optimizer's.
@pytest.mark.parametrize("routing", [[], ["model.moe.router.lb_window=4"]], ids=["lb_window_1", "lb_window_4"])
def test_resume_after_interrupt_is_bitwise_identical(run_config, tmp_path, monkeypatch, routing):
    cfg = run_config("train.max_steps=7", "train.checkpoint_every=5", *routing)
    train(cfg, tmp_path / "straight", progress=False)

    stop_at = 3  # not a checkpoint step: the interrupt itself must write one
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_stop_requested", lambda self, stop: self.step == stop_at)
        with pytest.raises(TrainingInterrupted, match="--resume"):
            train(cfg, tmp_path / "stopped", progress=False)
    assert (tmp_path / "stopped" / "checkpoints" / f"step-{stop_at:08d}").is_dir()
    assert len(read_metrics(tmp_path / "stopped" / "metrics.jsonl")) == stop_at

    train(cfg, tmp_path / "stopped", resume=True, progress=False)
    straight = without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    resumed = without_timing(read_metrics(tmp_path / "stopped" / "metrics.jsonl"))
    assert resumed == straight
    a, b = weights(tmp_path / "straight" / "final"), weights(tmp_path / "stopped" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_step_and_last_checkpoint(run_config, tmp_path, monkeypatch):
    calls = []

    def poisoned(out, labels, loss_cfg):
        losses = real(out, labels, loss_cfg)
        calls.append(1)
        if len(calls) == 3:
            losses["total"] = losses["total"] * math.nan
        return losses

    real = trainer_module.compute_loss
    monkeypatch.setattr(trainer_module, "compute_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 3: .*not finite.*step-00000002"):
        train(run_config("train.checkpoint_every=2"), tmp_path / "run", progress=False)
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["total"] == "nan"


def test_existing_run_is_not_overwritten(run_config, tmp_path):
    cfg = run_config("train.max_steps=1")
    train(cfg, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg.with_overrides(["train.lr=1e-3"]), tmp_path, progress=False)
    assert RunConfig.from_yaml(tmp_path / "config.yaml").train.lr == cfg.train.lr
    train(cfg.with_overrides(["train.lr=1e-3"]), tmp_path, force=True, progress=False)
    assert RunConfig.from_yaml(tmp_path / "config.yaml").train.lr == 1e-3


def test_gradient_accumulation_equals_one_big_batch(run_config, tmp_path):
    # The LB loss is not additive over micro-batches (it multiplies counts by probabilities) and
    # random pools are drawn per forward, so compare without either.
    same = ["model.moe.router.pool=off", "model.loss.lb_weight=0", "train.max_steps=3"]
    big = run_config(*same, "data.batch_size=4")
    accumulated = run_config(*same, "data.batch_size=2", "train.num_micro_batches=2")
    train(big, tmp_path / "big", progress=False)
    train(accumulated, tmp_path / "acc", progress=False)
    for a, b in zip(read_metrics(tmp_path / "big" / "metrics.jsonl"), read_metrics(tmp_path / "acc" / "metrics.jsonl")):
        for key in ("ce", "router_z", "logit_z", "grad_norm", "tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_fit_to_store(run_config):
    cfg = run_config()
    store = TokenStore.open(cfg.data.store)
    assert fit_to_store(cfg, store).model.eos_id == store.eos_id
    with pytest.raises(ConfigError, match="model.vocab_size"):
        fit_to_store(cfg.with_overrides([f"model.vocab_size={store.vocab_size - 1}"]), store)
    other_eos = (store.eos_id + 1) % store.vocab_size
    with pytest.raises(ConfigError, match="model.eos_id"):
        fit_to_store(cfg.with_overrides([f"model.eos_id={other_eos}"]), store)
    assert fit_to_store(cfg, store).model.tokenizer_hash == store.tokenizer_hash
    with pytest.raises(ConfigError, match="model.tokenizer_hash: 0123456789ab differs from the tokenizer"):
        fit_to_store(cfg.with_overrides(["model.tokenizer_hash='0123456789abcdef'"]), store)


def test_bf16_autocast_stays_close_to_fp32(run_config, tmp_path):
    for precision in ("fp32", "bf16"):
        train(run_config("train.max_steps=2", f"train.precision={precision}"), tmp_path / precision, progress=False)
    fp32, bf16 = (read_metrics(tmp_path / p / "metrics.jsonl") for p in ("fp32", "bf16"))
    assert [r["ce"] for r in bf16] == pytest.approx([r["ce"] for r in fp32], rel=0.02)
    assert [r["ce"] for r in bf16] != [r["ce"] for r in fp32]  # autocast did run in bf16


def test_resume_from_a_truncated_checkpoint_falls_back_and_stays_exact(run_config, tmp_path, capsys, monkeypatch):
    cfg = run_config("train.max_steps=8", "train.checkpoint_every=2")
    train(cfg, tmp_path / "straight", progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_stop_requested", lambda self, stop: self.step == 6)
        with pytest.raises(TrainingInterrupted):
            train(cfg, tmp_path / "run", progress=False)
    newest = tmp_path / "run" / "checkpoints" / "step-00000006" / "trainer_state.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    train(cfg, tmp_path / "run", resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"skipping a damaged checkpoint: {newest}: checksum mismatch" in err
    assert "resuming from the newest intact checkpoint instead" in err and "step-00000004" in err
    straight = without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    resumed = without_timing(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert resumed == straight
    a, b = weights(tmp_path / "straight" / "final"), weights(tmp_path / "run" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_refused_for_another_global_batch_leaves_the_run_as_it_was(run_config, tmp_path):
    train(run_config("train.max_steps=2", "train.checkpoint_every=2"), tmp_path / "run", progress=False)
    stored = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"data\.batch_size: .* hold 4 sequences .* set data\.batch_size=4$"):
        train(run_config("train.max_steps=4", "data.batch_size=2"), tmp_path / "run", resume=True, progress=False)
    assert (tmp_path / "run" / "config.yaml").read_text() == stored


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(run_config, tmp_path):
    cfg = run_config("train.max_steps=4", "train.checkpoint_every=2")
    train(cfg.with_overrides(["train.max_steps=2"]), tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "ce": 4.')
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_one(run_config, tmp_path, monkeypatch, capsys, how):
    disk = tmp_path / "disk"
    with small_tmpfs(disk, "4m") as mounted:
        if how == "tmpfs" and not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        config = tmp_path / "run.yaml"
        run_config("train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=0").to_yaml(config)
        real_save = CheckpointManager.save

        def save_then_fill(self, step, *args):
            if step == 4 and how == "injected":
                raise disk_full_error()
            path = real_save(self, step, *args)
            if step == 2 and how == "tmpfs":
                fill_disk(disk, leave_bytes=64 << 10)  # room for metrics lines, not for a checkpoint
            return path

        monkeypatch.setattr(CheckpointManager, "save", save_then_fill)
        run = disk / "run"
        assert main(["train", "--config", str(config), "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no space left on the device" in err and "Traceback" not in err
        assert CheckpointManager(run, 2).steps() == [2]
        assert read_checkpoint(run / "checkpoints" / "step-00000002").state["step"] == 2
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def one_step(cfg, run_dir, micro_batches):
    """The metrics record and weights after one optimizer step on the given micro-batches."""
    trainer = Trainer(cfg, run_dir, TokenStore.open(cfg.data.store), torch.device("cpu"))
    trainer.loader = iter(micro_batches)
    record = trainer._train_step()
    return record, trainer.plain_model


def test_lb_normalisation_under_accumulation_with_the_pool_on(run_config, tmp_path):
    # A fixed pool (d = 4 of 8) keeps the routing deterministic, so the only difference between the
    # runs below is how the step is cut into micro-batches.
    same = ["model.moe.router.pool=4", "model.loss.lb_weight=0.1"]
    loader = TrainLoader(None, run_config(*same, "data.batch_size=2").data)
    a, b = next(loader), next(loader)
    both = {k: torch.cat([a[k], a[k]]) for k in a}

    # Two identical micro-batches are one batch of both: same LB (1.0 at balance, not 2.0 or 0.5), same update.
    accumulated, acc_model = one_step(run_config(*same, "data.batch_size=2", "train.num_micro_batches=2"), tmp_path / "acc", [a, a])
    single, big_model = one_step(run_config(*same, "data.batch_size=4"), tmp_path / "big", [both])
    for key in ("lb", "ce", "router_z", "total", "grad_norm"):
        assert accumulated[key] == pytest.approx(single[key], rel=1e-5), key
    for (name, p), q in zip(acc_model.named_parameters(), big_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name

    # Different micro-batches: LB is per micro-batch (not accumulated across them, as in the paper's
    # code), so the step's LB is the mean of each micro-batch's own LB under the same weights.
    cfg = run_config(*same, "data.batch_size=2", "train.num_micro_batches=2")
    fresh = Trainer(cfg, tmp_path / "ref", TokenStore.open(cfg.data.store), torch.device("cpu")).plain_model
    with torch.no_grad():
        expected = [fresh(m["input_ids_BS"], doc_ids_BS=m["doc_ids_BS"]).lb_loss.item() for m in (a, b)]
    record, _ = one_step(cfg, tmp_path / "mixed", [a, b])
    assert record["lb"] == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert expected[0] != pytest.approx(expected[1], rel=1e-3)  # the halves differ, so the check has teeth


def test_a_pool_of_every_routed_expert_is_called_out_at_start_up(run_config, tmp_path, capsys):
    train(run_config("train.max_steps=1", "model.moe.router.pool=7..8"), tmp_path / "inert", progress=False)
    assert "pool 7..8: every pool holds all 7 routed experts, so this trains a standard MoE" in capsys.readouterr().err
    train(run_config("train.max_steps=1", "model.moe.router.pool=2..8"), tmp_path / "emo", progress=False)
    assert "standard MoE" not in capsys.readouterr().err


@pytest.mark.parametrize("peak", [None, 2e9])
def test_mfu_uses_the_configured_peak_or_is_left_out(run_config, tmp_path, peak):
    cfg = run_config("train.max_steps=2", f"train.peak_flops={'null' if peak is None else peak}")
    train(cfg, tmp_path / "run", progress=False)
    flops_per_token = train_flops_per_token(cfg.model, cfg.data.seq_len)
    for r in read_metrics(tmp_path / "run" / "metrics.jsonl"):
        if peak is None:
            assert "mfu" not in r
        else:
            assert r["mfu"] == pytest.approx(flops_per_token * r["tokens_per_s"] / peak)


def test_a_pool_schedule_routes_like_the_standard_moe_outside_its_window(run_config, tmp_path):
    """pool_start 0.5, pool_end 0.75 of 8 steps: steps 1-4 and 7-8 without the pool. The first four
    equal a run with the pool off (same seed and data); the EMO steps in between differ."""
    common = ("train.max_steps=8", "train.warmup_steps=2", "train.eval_every=0", "model.moe.router.pool=2..5")
    scheduled = run_config(*common, "train.pool_start=0.5", "train.pool_end=0.75")
    train(scheduled, tmp_path / "scheduled", progress=False)
    train(run_config(*common, "model.moe.router.pool=off"), tmp_path / "std", progress=False)
    train(run_config(*common), tmp_path / "emo", progress=False)
    runs = {name: read_metrics(tmp_path / name / "metrics.jsonl") for name in ("scheduled", "std", "emo")}
    assert [r["pool_active"] for r in runs["scheduled"]] == [0, 0, 0, 0, 1, 1, 0, 0]
    assert "pool_active" not in runs["emo"][0]
    ce = {name: [r["ce"] for r in records] for name, records in runs.items()}
    assert ce["scheduled"][:4] == ce["std"][:4]
    assert ce["emo"][:4] != ce["std"][:4]  # the pool does change training here
    assert ce["scheduled"][4] != ce["std"][4]


def test_a_pool_window_must_be_inside_the_run(run_config):
    with pytest.raises(ConfigError, match="pool_start, pool_end: expected pool_start < pool_end, got 0.5, 0.5"):
        run_config("train.pool_start=0.5", "train.pool_end=0.5")
