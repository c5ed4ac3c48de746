"""Data-parallel training with 2 gloo processes against one process on the same global batch, and
activation checkpointing under DDP and FSDP."""

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from emomoe import distributed
from emomoe.checkpoint import WEIGHTS_FILE
from emomoe.train.config import RunConfig
from emomoe.train.metrics import read_metrics
from emomoe.train.trainer import train
from tests.train.multiprocess import COMPARED, continue_from, free_port, join_group, train_processes, untimed_metrics


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(run_config, tmp_path, strategy):
    # 71 routed experts and 32 routed slots per rank and micro-batch: some experts surely get no
    # token, which must not break gradient synchronisation. Two micro-batches exercise skipping the
    # sync on the first. No random pools: their draws differ per rank.
    common = [
        "model.moe.num_experts=72", "model.moe.top_k=1", "model.moe.router.pool=off",
        "train.max_steps=4", "train.eval_every=2", "train.num_micro_batches=2", f"train.parallelism={strategy}",
    ]
    train(run_config(*common, "data.batch_size=2"), tmp_path / "one", progress=False)
    train_processes(run_config(*common, "data.batch_size=1"), tmp_path / "two", 2)

    one, two = read_metrics(tmp_path / "one" / "metrics.jsonl"), read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in COMPARED:
            assert (key in a) == (key in b)
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert any(r.get("routing/layer0/dead_experts", 0) > 0 for r in two)
    w1, w2 = (load_file(str(tmp_path / run / "final" / WEIGHTS_FILE)) for run in ("one", "two"))
    # Adam divides by the gradient's running RMS, so rounding-level gradient differences (another
    # summation order) can move a weight by a visible fraction of one learning-rate step.
    lr = run_config().train.lr
    assert all(torch.allclose(w1[k], w2[k], rtol=0, atol=0.05 * lr) for k in w1)


@pytest.mark.slow
def test_two_process_resume_is_bitwise(run_config, tmp_path):
    cfg = run_config(
        "train.max_steps=4", "train.checkpoint_every=2", "train.num_checkpoints_kept=4",
        "train.parallelism=fsdp", "data.batch_size=2",
    )
    train_processes(cfg, tmp_path / "straight", 2)
    resumed = continue_from(tmp_path / "straight", "step-00000002", tmp_path / "resumed")
    train_processes(cfg, resumed, 2, resume=True)
    assert untimed_metrics(resumed) == untimed_metrics(tmp_path / "straight")


def _counting_worker(rank: int, world_size: int, port: int, cfg_dict: dict, run_dir: str, routed: int) -> None:
    """Train, counting the all-reduces of the routers' load-balancing counts (routed experts + the
    token count: the only all-reduce of that size)."""
    join_group(rank, world_size, port)
    reduce, calls = distributed.all_reduce_sum_, []

    def counting(tensor):
        calls.append(tensor.numel() == routed + 1)
        return reduce(tensor)

    distributed.all_reduce_sum_ = counting
    try:
        train(RunConfig.from_dict(cfg_dict), run_dir, progress=False)
    finally:
        distributed.shutdown()
    (Path(run_dir) / f"router-all-reduces-{rank}").write_text(str(sum(calls)))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_activation_checkpointing_changes_no_number_and_all_reduces_the_lb_counts_once(run_config, tmp_path, strategy):
    # The EMO pitfall: recomputing the router in the backward would all-reduce its global LB
    # counts a second time. 11 routed experts make the routers' all-reduce the only one of 12 values.
    steps, micro_batches, layers = 3, 2, 2
    common = [
        "model.moe.num_experts=12", "model.moe.router.lb_scope=global", f"train.parallelism={strategy}",
        f"train.max_steps={steps}", f"train.num_micro_batches={micro_batches}", "data.batch_size=1",
    ]
    for name, checkpointing in (("kept", "false"), ("recomputed", "true")):
        cfg = run_config(*common, f"train.activation_checkpointing={checkpointing}")
        mp.spawn(_counting_worker, args=(2, free_port(), cfg.to_dict(), str(tmp_path / name), 11), nprocs=2)
        for rank in range(2):
            assert int((tmp_path / name / f"router-all-reduces-{rank}").read_text()) == steps * micro_batches * layers
    assert untimed_metrics(tmp_path / "recomputed") == untimed_metrics(tmp_path / "kept")
