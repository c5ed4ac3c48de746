"""Two "nodes" on this machine: two torchrun launches with --nnodes 2 that find each other through
the c10d rendezvous, as two machines of a cluster do (one process each, gloo).

They train a few steps under FSDP and save sharded checkpoints, a second pair resumes from one,
and the data they read is checked: the two ranks split every global batch into whole windows,
without overlap or gap, with document boundaries where the EOS tokens put them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from emomoe.data.loader import DataConfig, TrainLoader
from emomoe.train.config import RunConfig
from emomoe.train.trainer import train
from tests.train.multiprocess import assert_same_losses, continue_from, free_port, untimed_metrics

STORE = Path(__file__).resolve().parent / "assets" / "store"
EOS = 0
BATCH_PER_RANK = 2
WINDOW, NUM_BATCHES = 256, 3
"""The data check reads 3 batches of 256-token windows: 2 of them hold an EOS."""
RUN = {
    "model": {"preset": "tiny", "moe": {"router": {"pool": "off"}}},  # random pools are drawn per rank
    "data": {"store": str(STORE), "seq_len": 32, "batch_size": BATCH_PER_RANK},
    "train": {
        "max_steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "parallelism": "fsdp", "num_threads": 1,
        "eval_every": 2, "num_eval_windows": 2, "tensorboard": False,
    },
}
# What each rank of a launch reads: the batches of its data shard, saved for the test to compare.
READ_BATCHES = f"""
import os, sys
import numpy as np
from emomoe import distributed
from emomoe.data.loader import DataConfig, TrainLoader
distributed.init_from_env()
rank, world = distributed.get_rank(), distributed.get_world_size()
loader = TrainLoader(sys.argv[1], DataConfig(store=sys.argv[1], seq_len={WINDOW}, batch_size={BATCH_PER_RANK}),
                     rank=rank, world_size=world)
batches = [next(loader) for _ in range({NUM_BATCHES})]
np.savez(os.path.join(sys.argv[2], f"rank-{{rank}}.npz"), world=world,
         local_rank=int(os.environ["LOCAL_RANK"]), node=int(os.environ["GROUP_RANK"]),
         input_ids=np.stack([b["input_ids_BS"].numpy() for b in batches]),
         doc_ids=np.stack([b["doc_ids_BS"].numpy() for b in batches]))
distributed.shutdown()
"""


def two_nodes(*command: str, timeout: float = 600) -> None:
    """Run `command` (torchrun's script and arguments) as a job of two nodes of one process each."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launches = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
             "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
             "--rdzv-id", "emomoe-two-nodes", "--max-restarts", "0", *command],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for node in (0, 1)
    ]
    try:
        outputs = [launch.communicate(timeout=timeout)[0] for launch in launches]
    finally:
        for launch in launches:
            launch.kill()
    for node, (launch, output) in enumerate(zip(launches, outputs)):
        assert launch.returncode == 0, f"node {node}:\n{output[-4000:]}"


def _doc_ids_by_hand(row: np.ndarray) -> list[int]:
    """Each position's document: the EOS tokens before it in its row (an EOS ends its document)."""
    ids, doc = [], 0
    for token in row:
        ids.append(doc)
        doc += int(token == EOS)
    return ids


@pytest.mark.slow
def test_two_nodes_split_each_global_batch_into_whole_windows_keeping_documents(tmp_path):
    script = tmp_path / "read_batches.py"
    script.write_text(READ_BATCHES)
    two_nodes(str(script), str(STORE), str(tmp_path))
    ranks = [np.load(tmp_path / f"rank-{rank}.npz") for rank in (0, 1)]
    assert [int(r["world"]) for r in ranks] == [2, 2]
    assert [int(r["local_rank"]) for r in ranks] == [0, 0]  # one process on each node
    assert sorted(int(r["node"]) for r in ranks) == [0, 1]
    one = TrainLoader(STORE, DataConfig(store=str(STORE), seq_len=WINDOW, batch_size=2 * BATCH_PER_RANK))
    for i in range(NUM_BATCHES):
        whole = next(one)
        assert np.array_equal(np.concatenate([r["input_ids"][i] for r in ranks]), whole["input_ids_BS"].numpy())
        for r in ranks:
            assert [_doc_ids_by_hand(row) for row in r["input_ids"][i]] == r["doc_ids"][i].tolist()
    assert any(EOS in r["input_ids"] for r in ranks)  # there were document boundaries to keep


@pytest.mark.slow
def test_two_nodes_train_save_and_resume_as_one_process_trains(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    emomoe_train = ["-m", "emomoe", "train", "--config", str(config), "--no-progress"]
    two_nodes(*emomoe_train, "--out", str(tmp_path / "nodes"))
    shards = sorted(p.name for p in (tmp_path / "nodes" / "checkpoints" / "step-00000002").glob("state-*"))
    assert shards == ["state-00000-of-00002.safetensors", "state-00001-of-00002.safetensors"]

    resumed = continue_from(tmp_path / "nodes", "step-00000002", tmp_path / "resumed")
    two_nodes(*emomoe_train, "--out", str(resumed), "--resume")
    assert untimed_metrics(resumed) == untimed_metrics(tmp_path / "nodes")  # the same processes: bitwise

    # One process taking both nodes' sequences: the same training, to float32 summation order.
    single = RunConfig.from_dict(RUN).with_overrides([f"data.batch_size={2 * BATCH_PER_RANK}"])
    train(single, tmp_path / "single", progress=False)
    assert_same_losses(tmp_path / "single", tmp_path / "nodes", [1, 2, 3, 4], rel=1e-4)
