import json

import pytest
import torch
from safetensors.torch import load_file

from emomoe.checkpoint.writer import INDEX_FILE, SINGLE_FILE, ShardedWriter, parse_size


def tensors():
    g = torch.Generator().manual_seed(0)
    return {f"t{i}": torch.randn(10, 10, generator=g) for i in range(5)}  # 400 bytes each


def test_everything_in_one_shard_is_a_single_file(tmp_path):
    with ShardedWriter(tmp_path, max_shard_bytes=10_000) as writer:
        for name, t in tensors().items():
            writer.add(name, t)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE]
    loaded = load_file(str(tmp_path / SINGLE_FILE))
    assert all(torch.equal(loaded[k], v) for k, v in tensors().items())


def test_shards_stay_under_the_limit_and_the_index_maps_every_tensor(tmp_path):
    with ShardedWriter(tmp_path, max_shard_bytes=900) as writer:  # two 400-byte tensors per shard
        for name, t in tensors().items():
            writer.add(name, t)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 5 * 400
    shards = sorted({*index["weight_map"].values()})
    assert shards == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*shards, INDEX_FILE])
    for name, t in tensors().items():
        assert torch.equal(load_file(str(tmp_path / index["weight_map"][name]))[name], t)
    assert [len(load_file(str(tmp_path / s))) for s in shards] == [2, 2, 1]


def test_views_of_one_tensor_are_written_as_separate_tensors(tmp_path):
    bank = torch.arange(24, dtype=torch.float32).view(4, 6)
    with ShardedWriter(tmp_path) as writer:
        for j in range(4):
            writer.add(f"expert.{j}", bank[j])
    loaded = load_file(str(tmp_path / SINGLE_FILE))
    assert all(torch.equal(loaded[f"expert.{j}"], bank[j]) for j in range(4))


def test_a_failed_write_leaves_no_shards_behind(tmp_path):
    with pytest.raises(RuntimeError), ShardedWriter(tmp_path, max_shard_bytes=500) as writer:
        for name, t in tensors().items():
            writer.add(name, t)
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_names_are_written_once(tmp_path):
    writer = ShardedWriter(tmp_path)
    writer.add("a", torch.zeros(1))
    with pytest.raises(ValueError, match="'a'"):
        writer.add("a", torch.zeros(1))


def test_shard_sizes_read_like_transformers():
    assert [parse_size(s) for s in ("5GB", "500MB", "2GiB", "1000")] == [5 * 10**9, 5 * 10**8, 2 * 2**30, 1000]
    with pytest.raises(Exception, match="expected a size like 5GB"):
        parse_size("5 parsecs")
