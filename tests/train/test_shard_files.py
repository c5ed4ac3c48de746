"""The pickle-free DCP storage layer, in one process: what it writes is plain safetensors + JSON,
read back by the safetensors library itself, and loading never unpickles."""

import json
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint import CheckpointException

from emomoe.errors import DataError
from emomoe.train.shard_files import (
    FORMAT,
    INDEX_FILE,
    ChunkFiles,
    ShardReader,
    ShardWriter,
    block,
    read_index,
    shard_file,
)

# DCP warns that no process group means one process: that is what these tests mean.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def state():
    torch.manual_seed(0)
    return {
        "model": {"w": torch.randn(6, 4), "half": torch.randn(3, 5).bfloat16(), "empty": torch.zeros(0, 3)},
        "optimizer": {"w.step": torch.tensor(7.0), "ids": torch.arange(5)},
    }


def save(directory):
    directory.mkdir()
    dcp.save(state(), storage_writer=ShardWriter(directory), no_dist=True)
    return directory


def test_one_process_writes_one_safetensors_file_and_a_json_index(tmp_path):
    directory = save(tmp_path / "s")
    assert sorted(p.name for p in directory.iterdir()) == sorted([INDEX_FILE, shard_file(0, 1)])
    stored = load_file(str(directory / shard_file(0, 1)))  # the safetensors library reads it as it is
    expected = {f"{group}.{name}": t for group, tensors in state().items() for name, t in tensors.items()}
    assert {key.partition("@")[0] for key in stored} == set(expected)
    for key, tensor in stored.items():
        original = expected[key.partition("@")[0]]
        assert tensor.dtype == original.dtype and torch.equal(tensor, original), key
    index = json.loads((directory / INDEX_FILE).read_text())
    assert index["format"] == FORMAT
    assert index["tensors"]["model.half"]["dtype"] == "BF16" and index["tensors"]["model.w"]["shape"] == [6, 4]


def test_loading_reads_it_back_without_unpickling_anything(tmp_path, monkeypatch):
    directory = save(tmp_path / "s")

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    loaded = {group: {k: torch.full_like(t, 3) for k, t in tensors.items()} for group, tensors in state().items()}
    dcp.load(loaded, storage_reader=ShardReader(directory, read_index(directory)), no_dist=True)
    for group, tensors in state().items():
        for name, tensor in tensors.items():
            assert torch.equal(loaded[group][name], tensor), (group, name)


def test_a_block_of_a_chunk_is_read_alone(tmp_path):
    directory = save(tmp_path / "s")
    (chunk,) = read_index(directory)["model.w"].chunks
    with ChunkFiles(directory) as files:
        part = files.read(chunk, (2, 1), (3, 2))
    assert torch.equal(part, state()["model"]["w"][block((2, 1), (3, 2))])
    assert part.shape == (3, 2)


def test_a_value_that_is_not_a_tensor_is_refused_not_pickled(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(CheckpointException, match="lr: not a tensor"):
        dcp.save({"lr": 0.1, "w": torch.zeros(2)}, storage_writer=ShardWriter(tmp_path / "s"), no_dist=True)


@pytest.mark.parametrize("text, message", [
    ("{not json", "damaged shard index"),
    (json.dumps({"format": "something-else", "tensors": {}}), "not a sharded training state index"),
    (json.dumps({"format": FORMAT, "tensors": {"w": {"dtype": "F99", "shape": [1], "chunks": []}}}), "damaged shard index"),
])
def test_a_damaged_or_foreign_index_is_one_error_naming_it(tmp_path, text, message):
    (tmp_path / INDEX_FILE).write_text(text)
    with pytest.raises(DataError, match=rf"{INDEX_FILE}: {message}"):
        read_index(tmp_path)
    with pytest.raises(DataError, match=f"{INDEX_FILE}: not found"):
        read_index(tmp_path / "elsewhere")
