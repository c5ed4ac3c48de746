"""Data-parallel training with 2 gloo processes against one process on the same global batch."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from emomoe.checkpoint import WEIGHTS_FILE
from emomoe.train.metrics import TIMING_KEYS, read_metrics
from emomoe.train.trainer import train
from tests.train.multiprocess import COMPARED, train_processes


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
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(tmp_path / "straight" / name, resumed / name)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step-00000002", resumed / "checkpoints" / "step-00000002")
    train_processes(cfg, resumed, 2, resume=True)

    def strip(run):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run / "metrics.jsonl")]

    assert strip(resumed) == strip(tmp_path / "straight")
