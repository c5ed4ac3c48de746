"""Sharded FSDP checkpoints, with 4, 2 and 1 gloo processes on this CPU.

A checkpoint saved by 4 processes resumes on 2 (under FSDP and under DDP) and on 1, one saved by a
single process resumes on 4, one left by a kill -9 of 2 processes mid-save resumes on 1, and the
continued losses equal those of the run that went on at its original size. Every
resharded run keeps the global batch (processes x data.batch_size = 4) and routes with a fixed
pool: a random pool size is drawn per rank, so it would differ with the world size by design.

Tolerance (RESHARD_REL): a resume on the same processes is bitwise (test_parallel.py); on another
number, the gradients are summed in another order (per rank over another number of sequences,
then reduce-scattered over another number of ranks), which changes float32 results in their last
bits (2^-23 = 1.2e-7 relative), and Adam's division by the gradients' RMS can carry such a
difference into the next step. Measured here: at most 2e-7 relative over two steps. A real fault
is four orders larger: resuming with zeroed AdamW moments moves the next step's CE by 5e-3.
"""

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from emomoe.checkpoint import WEIGHTS_FILE
from emomoe.io import OUTPUT_MARKER
from emomoe.model import ModelConfig, build_model
from emomoe.train import shard_files
from emomoe.train.checkpointing import CheckpointManager, load_trainer_state, read_checkpoint
from emomoe.train.config import RunConfig, TrainConfig
from emomoe.train.metrics import read_metrics
from emomoe.train.optim import build_optimizer
from emomoe.train.shard_files import INDEX_FILE, read_index, shard_file
from emomoe.train.sharded import load_shards, save_shards
from emomoe.train.trainer import train
from tests.fixtures import damage
from tests.train.conftest import tiny_run_config
from tests.train.multiprocess import assert_same_losses, continue_from, free_port, join_group, train_processes

RESHARD_REL = 1e-5
STEP_2, STEP_4 = "step-00000002", "step-00000004"


def fsdp_config(store: Path, world_size: int) -> RunConfig:
    return tiny_run_config(
        store, "model.moe.router.pool=4", "train.max_steps=4", "train.checkpoint_every=2",
        "train.parallelism=fsdp", f"data.batch_size={4 // world_size}",
    )


@pytest.fixture(scope="module")
def run_at_4(tiny_store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fsdp") / "run"
    train_processes(fsdp_config(tiny_store, 4), run, 4)
    return run


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_plain_model_and_optimizer_come_back_exactly(tmp_path):
    cfg = ModelConfig.preset("tiny").with_overrides(["moe.router.pool=off"])
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, TrainConfig())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    (tmp_path / "s").mkdir()
    groups = save_shards(tmp_path / "s", model, optimizer)

    torch.manual_seed(1)
    fresh = build_model(cfg)
    fresh_optimizer = build_optimizer(fresh, TrainConfig(lr=1.0))
    load_shards(tmp_path / "s", fresh, fresh_optimizer, groups)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert saved["param_groups"] == loaded["param_groups"]  # the learning rate too
    for i, moments in saved["state"].items():
        assert all(torch.equal(moments[k], loaded["state"][i][k]) for k in moments), i


@pytest.mark.slow
def test_each_of_4_ranks_writes_its_own_shards_and_nothing_twice(run_at_4):
    step = run_at_4 / "checkpoints" / STEP_2
    shards = [shard_file(rank, 4) for rank in range(4)]
    assert sorted(p.name for p in step.iterdir()) == sorted(
        [OUTPUT_MARKER, "checksums.sha256", "model.yaml", INDEX_FILE, *shards, "trainer_state.json",
         "trainer_state.safetensors"]
    )
    index = read_index(step)
    assert sorted(c.file for c in index["model.embed.weight"].chunks) == shards
    for name, tensor in index.items():  # the chunks tile each tensor exactly once
        assert sum(torch.Size(c.sizes).numel() for c in tensor.chunks) == torch.Size(tensor.shape).numel(), name
    sizes = [(step / name).stat().st_size for name in shards]
    assert max(sizes) < 1.1 * min(sizes)
    assert (run_at_4 / "final" / WEIGHTS_FILE).is_file()  # the run's model stays in the model format


@pytest.mark.slow
def test_saved_at_4_resumes_at_2_past_a_flipped_byte_in_one_ranks_shard(run_at_4, tiny_store, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(run_at_4, run)
    damaged = damage(run / "checkpoints" / STEP_4 / shard_file(2, 4), "flip")
    capfd.readouterr()
    train_processes(fsdp_config(tiny_store, 2), run, 2, resume=True)
    err = capfd.readouterr().err
    assert f"skipping a damaged checkpoint: {damaged}: checksum mismatch" in err
    assert f"resuming from the newest intact checkpoint instead: {run / 'checkpoints' / STEP_2}" in err
    assert_same_losses(run_at_4, run, [3, 4], RESHARD_REL)
    assert (run / "checkpoints" / STEP_4 / shard_file(1, 2)).is_file()


@pytest.mark.slow
def test_saved_at_4_resumes_in_one_process(run_at_4, tiny_store, tmp_path):
    run = continue_from(run_at_4, STEP_2, tmp_path / "run")
    train(fsdp_config(tiny_store, 1), run, resume=True, progress=False)
    assert_same_losses(run_at_4, run, [3, 4], RESHARD_REL)
    assert (run / "checkpoints" / STEP_4 / WEIGHTS_FILE).is_file()  # one process writes the model format


@pytest.mark.slow
def test_a_sharded_checkpoint_anneals_in_one_process(run_at_4, tiny_store, tmp_path):
    # The anneal's first step sees the checkpoint's weights and data, so its CE is the original
    # run's at step 3; its LR is on the line from the checkpoint's LR (step 2) to 0 at step 4.
    source = run_at_4 / "checkpoints" / STEP_2
    cfg = fsdp_config(tiny_store, 1).with_overrides([f"train.anneal_from={source}"])
    train(cfg, tmp_path / "anneal", progress=False)
    records = read_metrics(tmp_path / "anneal" / "metrics.jsonl")
    original = {r["step"]: r for r in read_metrics(run_at_4 / "metrics.jsonl")}
    assert [r["step"] for r in records] == [3, 4]
    assert records[0]["ce"] == pytest.approx(original[3]["ce"], rel=RESHARD_REL)
    start_lr = load_trainer_state(source)["optimizer"]["param_groups"][0]["lr"]
    assert [r["lr"] for r in records] == pytest.approx([start_lr / 2, 0.0])


@pytest.mark.slow
def test_saved_at_4_resumes_under_ddp_at_2(run_at_4, tiny_store, tmp_path):
    run = continue_from(run_at_4, STEP_2, tmp_path / "run")
    train_processes(fsdp_config(tiny_store, 2).with_overrides(["train.parallelism=ddp"]), run, 2, resume=True)
    assert_same_losses(run_at_4, run, [3, 4], RESHARD_REL)
    assert (run / "checkpoints" / STEP_4 / WEIGHTS_FILE).is_file()  # DDP writes the model format


@pytest.mark.slow
def test_saved_by_one_process_resumes_at_4(tiny_store, tmp_path):
    train(fsdp_config(tiny_store, 1), tmp_path / "one", progress=False)
    run = continue_from(tmp_path / "one", STEP_2, tmp_path / "run")
    assert (run / "checkpoints" / STEP_2 / WEIGHTS_FILE).is_file()
    train_processes(fsdp_config(tiny_store, 4), run, 4, resume=True)
    assert_same_losses(tmp_path / "one", run, [3, 4], RESHARD_REL)
    assert (run / "checkpoints" / STEP_4 / INDEX_FILE).is_file()


def _stalling_worker(rank: int, world_size: int, port: int, cfg_dict: dict, run_dir: str, stall_in: str) -> None:
    """Train, but stop for good inside the save of checkpoint `stall_in`, once this rank's shard is written."""
    join_group(rank, world_size, port)
    write = shard_files._write_chunks

    def write_then_stall(path, plan, planner):
        results = write(path, plan, planner)
        if path.parent.name == stall_in:
            (Path(run_dir) / f"stalled-{rank}").touch()
            time.sleep(600)
        return results

    shard_files._write_chunks = write_then_stall
    train(RunConfig.from_dict(cfg_dict), run_dir, progress=False)


@pytest.mark.slow
def test_a_kill_9_during_a_sharded_save_leaves_the_previous_checkpoint(run_at_4, tiny_store, tmp_path, capfd):
    run = tmp_path / "run"
    args = (2, free_port(), fsdp_config(tiny_store, 2).to_dict(), str(run), STEP_4)
    processes = mp.start_processes(_stalling_worker, args=args, nprocs=2, join=False, start_method="spawn").processes
    deadline = time.monotonic() + 300
    while not all((run / f"stalled-{rank}").exists() for rank in range(2)):
        assert time.monotonic() < deadline and all(p.is_alive() for p in processes)
        time.sleep(0.1)
    for p in processes:
        os.kill(p.pid, signal.SIGKILL)
        p.join()

    root = run / "checkpoints"
    half_written = [p / STEP_4 for p in root.iterdir() if p.name.startswith(f".{STEP_4}.")]
    assert half_written and (half_written[0] / shard_file(1, 2)).is_file()
    assert CheckpointManager(run, 2).steps() == [2]
    assert read_checkpoint(root / STEP_2).weights is None  # verified intact, and sharded
    capfd.readouterr()
    train(fsdp_config(tiny_store, 1), run, resume=True, progress=False)  # and on another number of processes
    assert f"resuming from {root / STEP_2} (step 2)" in capfd.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["latest", STEP_2, STEP_4]
    assert_same_losses(run_at_4, run, [1, 2, 3, 4], RESHARD_REL)  # the same training, on 4, 2 then 1 processes
