"""`plan`: its state bytes and FLOPs against hand counts, its verdict, and its total against the
memory training takes on this CPU (the cheap cases of bench/plan_accuracy.py, which runs them all:
the tiny preset on 2 FSDP processes, and in one with activation checkpointing)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from emomoe.errors import ConfigError
from emomoe.train.config import RunConfig
from emomoe.train.plan import PlanConfig, plan

BENCH = Path(__file__).resolve().parents[2] / "bench"

# emo-1b14b by hand (spec section 2.1): V 100352, d 2048, 16 layers of 128 experts of hidden 1024.
EMBEDDINGS = 2 * 100352 * 2048  # input table and LM head
LAYER = 4 * 2048**2 + 2 * 2048 + 128 * 2048 + 128 * 3 * 2048 * 1024  # attention, norms, gate, experts
EMO_PARAMS = EMBEDDINGS + 16 * LAYER + 2048  # + the final norm: 13,568,641,024
ROPE = 2 * 4096 * 128 * 4  # cos and sin tables, max_seq_len x head_dim, float32
GB = 10**9


def emo(*overrides: str) -> RunConfig:
    return RunConfig.from_dict({"model": {"preset": "emo-1b14b"}, "data": {"seq_len": 4096, "batch_size": 4}}
                               ).with_overrides(["train.precision=bf16", "train.num_micro_batches=2", "train.parallelism=fsdp",
                                                 *overrides])


def test_one_gpu_holds_the_whole_state_in_float32():
    p = plan(emo(), PlanConfig(gpus=1))
    assert EMO_PARAMS == 13_568_641_024
    assert p.strategy == "single"
    assert (p.parameters, p.gradients, p.optimizer, p.strategy_buffers) == (4 * EMO_PARAMS + ROPE, 4 * EMO_PARAMS,
                                                                             8 * EMO_PARAMS, 0)


def test_ddp_adds_a_second_copy_of_the_gradients_and_fsdp_shards_them():
    ddp = plan(emo("train.parallelism=ddp"), PlanConfig(gpus=8))
    assert ddp.strategy_buffers == ddp.gradients == 4 * EMO_PARAMS
    fsdp = plan(emo("train.parallelism=fsdp"), PlanConfig(gpus=128))
    # Every tensor of emo-1b14b has a multiple of 128 rows (128 experts, 2048, 100352 = 784 x 128).
    assert (fsdp.parameters, fsdp.gradients) == (4 * EMO_PARAMS // 128 + ROPE, 4 * EMO_PARAMS // 128)
    # Unsharded: the root (embeddings and the final norm: parameters and gradients), and three blocks.
    assert fsdp.strategy_buffers == 2 * 4 * (EMBEDDINGS + 2048) + 3 * 4 * LAYER


def test_an_fsdp_shard_is_the_first_ceil_rows_over_gpus_of_every_tensor():
    tiny = RunConfig.from_dict({"model": {"preset": "tiny"}, "data": {"seq_len": 128}, "train": {"parallelism": "fsdp"}})
    p = plan(tiny, PlanConfig(gpus=3))
    # vocab 512, d 32, 2 layers, 8 experts of hidden 32: rank 0 takes ceil(rows / 3) of each.
    rows_512, rows_32, rows_8 = 171, 11, 3
    embeddings = 2 * rows_512 * 32
    layer = 2 * rows_32 + 4 * rows_32 * 32 + rows_8 * 32 + 3 * rows_8 * 32 * 32  # norms, attention, gate, experts
    assert p.gradients == 4 * (embeddings + rows_32 + 2 * layer)
    assert p.parameters == p.gradients + 2 * 128 * 8 * 4  # + the rope tables (max_seq_len 128, head_dim 8)
    assert p.optimizer == 2 * p.gradients


MATRICES = EMO_PARAMS - EMBEDDINGS // 2 - (2 * 16 + 1) * 2048
"""What autocast casts: every parameter but the input embedding and the 33 norm vectors."""


def test_bf16_autocast_keeps_a_bf16_copy_of_every_matrix_but_the_embedding():
    assert plan(emo(), PlanConfig(gpus=128)).autocast_weights == 2 * MATRICES
    assert plan(emo("train.precision=fp32"), PlanConfig(gpus=128)).autocast_weights == 0


def test_global_batch_flops_and_time_per_step():
    p = plan(emo(), PlanConfig(gpus=128, mfu=0.4, gpu_flops=989e12))
    assert p.global_batch_tokens == 4 * 4096 * 2 * 128 == 4_194_304
    # 6 x (active parameters without the input embedding: each layer's attention, norms, gate and
    # 7 + 1 of its 128 experts; the final norm and the LM head) + causal attention 6 x L x S x d.
    active = 16 * (4 * 2048**2 + 2 * 2048 + 128 * 2048 + 8 * 3 * 2048 * 1024) + 2048 + 100352 * 2048
    per_token = 6 * active + 6 * 16 * 4096 * 2048
    assert p.flops_per_step == pytest.approx(per_token * 4_194_304, rel=1e-12)
    assert p.seconds_per_step == pytest.approx(per_token * 4_194_304 / (128 * 989e12 * 0.4), rel=1e-12)
    assert plan(emo("train.peak_flops=0"), PlanConfig(gpus=128)).seconds_per_step is None


def test_what_does_not_fit_is_named_in_one_line():
    state_alone = plan(emo("train.parallelism=ddp"), PlanConfig(gpus=8)).problem()
    # Weights, gradients, two moments and DDP's buckets in float32, and autocast's bf16 copies.
    state = 5 * 4 * EMO_PARAMS + ROPE + 2 * MATRICES
    assert f"the model state alone takes {state / GB:.2f} GB per GPU (ddp on 8 GPUs" in state_alone
    assert state_alone.endswith("use fsdp (train.parallelism) to shard it")
    # 26.7 GB of autocast's bf16 weights and 13.2 GB of unsharded root and blocks: no GPU count helps.
    assert plan(emo(), PlanConfig(gpus=128, gpu_memory="36GB")).problem().endswith(
        f"its unsharded part ({(2 * MATRICES + 2 * 4 * (EMBEDDINGS + 2048) + 3 * 4 * LAYER) / GB:.2f} GB) does not "
        "shrink with more GPUs"
    )
    squeezed = plan(emo(), PlanConfig(gpus=128, gpu_memory="80GB")).problem()
    assert "the activations of a micro-batch of 4 x 4096 tokens" in squeezed
    assert "set train.activation_checkpointing" in squeezed
    roomy = plan(emo("train.activation_checkpointing=true"), PlanConfig(gpus=128, gpu_memory="200GB"))
    assert roomy.fits and roomy.problem() is None
    assert roomy.total() == roomy.state + roomy.checkpointed.peak < roomy.total(checkpointing=False)


@pytest.mark.parametrize("field, value, message", [
    ("gpus", 0, "gpus: expected an integer >= 1, got 0"),
    ("gpu_memory", "lots", "gpu_memory: 'lots': expected a size like 5GB, 500MB or 2GiB"),
    ("mfu", 1.5, "mfu: expected a number in (0, 1], got 1.5"),
    ("gpu_flops", -1.0, "gpu_flops: expected a number > 0, got -1.0"),
])
def test_a_bad_setting_names_its_field(field, value, message):
    with pytest.raises(ConfigError, match=f"^{message.replace('(', '.').replace(')', '.')}$"):
        PlanConfig.from_dict({field: value})


@pytest.mark.slow
def test_the_plan_is_within_20_percent_of_the_memory_training_takes_here(monkeypatch):
    # Imported by name from bench/ on the path, so that the processes it spawns import it too.
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("plan_accuracy")
    for case in bench.CHEAP:
        row = bench.compare(case)
        assert abs(row["relative_error"]) <= bench.TARGET, row
