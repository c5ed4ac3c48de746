"""Streaming selection: a checkpoint read one block at a time gives what the in-memory model gives."""

import json

import pytest
import torch

from emomoe.checkpoint import CheckpointReader, ShardedWriter, load_model, save_model
from emomoe.errors import DataError
from emomoe.hf.config_json import emo_config_json
from emomoe.hf.layouts import EMO, tensor_keys
from emomoe.model import build_model
from emomoe.model.attention import Attention
from emomoe.model.experts import Experts
from emomoe.select import stream
from emomoe.select.methods import ExpertSelector, SelectMethod
from emomoe.select.stream import ChunkedExperts, LayerStream
from emomoe.select.weight_source import ModelWeights


@pytest.fixture(scope="module")
def model_and_batches(make_tiny_config, random_ids):
    """A 3-layer tiny EMO model with peaked routing, a dense middle layer, and 3 calibration batches."""
    torch.manual_seed(3)
    cfg = make_tiny_config(num_layers=3).with_overrides(["moe.num_experts_per_layer=[8,1,8]"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.layers:
            if block.moe.router is not None:
                block.moe.router.gate.weight.mul_(40.0)
    batches = [{"input_ids_BS": random_ids(cfg, batch=2, seq=16, seed=s)} for s in range(3)]
    return model, cfg, batches


def _subset(source, batches, method, keep):
    tensors = {}
    kept = ExpertSelector(source, batches, method, seed=1).write_subset(keep, tensors.__setitem__)
    return kept, tensors


@pytest.mark.parametrize("method", list(SelectMethod))
@pytest.mark.parametrize("max_shard_bytes", [10**9, 20_000], ids=["single-file", "sharded"])
def test_streamed_checkpoint_selects_exactly_what_the_model_in_memory_selects(
    tmp_path, model_and_batches, method, max_shard_bytes
):
    model, cfg, batches = model_and_batches
    save_model(tmp_path / "ckpt", model, cfg, max_shard_bytes=max_shard_bytes)
    num_files = len(list((tmp_path / "ckpt").glob("*.safetensors")))
    assert (num_files == 1) == (max_shard_bytes > 10**6)
    keep = [3, 2]
    in_memory = _subset(ModelWeights(model, cfg), batches, method, keep)
    with CheckpointReader(tmp_path / "ckpt") as reader:
        streamed = _subset(reader, batches, method, keep)
    assert streamed[0] == in_memory[0] and [len(k) for k in streamed[0]] == keep
    assert sorted(streamed[1]) == sorted(in_memory[1])
    for name, tensor in in_memory[1].items():
        assert torch.equal(streamed[1][name], tensor), name
    # The subset holds exactly the kept rows of the source (shared expert last).
    full = model.state_dict()
    kept_ids = [*in_memory[0][1], 7]
    assert torch.equal(in_memory[1]["layers.2.moe.experts.w2"], full["layers.2.moe.experts.w2"][kept_ids])
    assert torch.equal(in_memory[1]["layers.1.moe.experts.w1"], full["layers.1.moe.experts.w1"])


def test_a_bf16_checkpoint_selects_like_fp32_with_the_same_values_and_stays_bf16(tmp_path, model_and_batches):
    model, cfg, batches = model_and_batches
    bf16 = {k: v.bfloat16() for k, v in model.state_dict().items()}
    as_fp32 = build_model(cfg).eval()
    as_fp32.load_state_dict({k: v.float() for k, v in bf16.items()})
    stored = build_model(cfg)
    stored.load_state_dict(bf16)
    save_model(tmp_path / "bf16", stored.bfloat16(), cfg)
    with CheckpointReader(tmp_path / "bf16") as reader:
        assert reader.dtype("layers.0.moe.experts.w1") == torch.bfloat16
        kept, tensors = _subset(reader, batches, SelectMethod.LAYERWISE, [3, 2])
    expected, _ = _subset(ModelWeights(as_fp32, cfg), batches, SelectMethod.LAYERWISE, [3, 2])
    assert kept == expected
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert torch.equal(tensors["layers.0.moe.experts.w3"], bf16["layers.0.moe.experts.w3"][[*kept[0], 7]])


@pytest.mark.parametrize("chunk_experts", [1, 3, 7])
def test_chunked_experts_equal_the_experts_module_and_read_only_chosen_chunks(chunk_experts, monkeypatch):
    torch.manual_seed(0)
    experts = Experts(num_experts=8, num_shared=1, d_model=16, hidden=12)
    x_TD = torch.randn(10, 16)
    experts_TK = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1], [1, 0], [2, 1], [0, 2], [1, 2], [2, 0], [0, 1]])
    weights_TK = torch.rand(10, 2)
    reads = []

    def read(param, rows):
        reads.append(list(rows))
        return getattr(experts, param).detach()[rows]

    expert_bytes = 3 * 16 * 12 * 4
    monkeypatch.setattr(stream, "EXPERT_CHUNK_BYTES", chunk_experts * expert_bytes)
    chunked = ChunkedExperts(read, num_routed=7, num_experts=8, expert_bytes=expert_bytes, keep_slot_norms=True)
    with torch.no_grad():
        expected = experts(x_TD, experts_TK, weights_TK)
        got = chunked(x_TD, experts_TK, weights_TK)
        own_TK = torch.stack([
            torch.stack([(experts(x_TD[t : t + 1], experts_TK[t, k].view(1, 1), torch.ones(1, 1)) - experts(
                x_TD[t : t + 1])).norm() for k in range(2)])
            for t in range(10)
        ])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.slot_norms_TK, own_TK, rtol=1e-5, atol=1e-6)
    # Only experts 0..2 are chosen: chunks holding none of them are never read.
    routed_reads = [r for r in reads if r != [7]]
    assert all(min(r) <= 2 for r in routed_reads) and len(routed_reads) == 3 * -(-3 // chunk_experts)


def test_calibration_tokens_outside_the_vocabulary_are_refused(model_and_batches):
    model, cfg, _ = model_and_batches
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        LayerStream(ModelWeights(model, cfg), [{"input_ids_BS": torch.tensor([[1, cfg.vocab_size]])}])


def test_layerwise_runs_each_layers_attention_once_per_batch(model_and_batches, monkeypatch):
    model, cfg, batches = model_and_batches
    calls = []
    original = Attention.forward
    monkeypatch.setattr(Attention, "forward", lambda self, *args: calls.append(1) or original(self, *args))
    ExpertSelector(ModelWeights(model, cfg), batches, SelectMethod.LAYERWISE).choose([3, 2])
    # Layers 0 and 2 are measured (attention runs) and layer 0 is then run pruned (attention
    # replayed); the dense layer 1 runs once; layer 2, the last MoE layer, is not run pruned.
    assert len(calls) == 3 * len(batches)


def _write_hf(directory, model, cfg, max_shard_bytes):
    """`model` as a Hugging Face EMO directory: config.json and one matrix per expert."""
    directory.mkdir()
    state = model.state_dict()
    with ShardedWriter(directory, max_shard_bytes) as writer:
        for name, keys in tensor_keys(cfg, EMO).items():
            for key, part in [(keys, state[name])] if isinstance(keys, str) else zip(keys, state[name]):
                writer.add(key, part)
    config = emo_config_json(cfg, eos_id=0, pad_id=0, dtype="float32")
    (directory / "config.json").write_text(json.dumps(config))


def test_a_hugging_face_directory_streams_like_the_model_it_loads_as(tmp_path, model_and_batches):
    model, cfg, batches = model_and_batches
    _write_hf(tmp_path / "hf", model, cfg.with_overrides(["moe.router.pool=off"]), max_shard_bytes=20_000)
    loaded, loaded_cfg = load_model(tmp_path / "hf")
    with CheckpointReader(tmp_path / "hf") as reader:
        assert reader.format == "hf-emo" and len(list((tmp_path / "hf").glob("*.safetensors"))) > 1
        streamed = _subset(reader, batches, SelectMethod.LAYERWISE, [3, 2])
    in_memory = _subset(ModelWeights(loaded, loaded_cfg), batches, SelectMethod.LAYERWISE, [3, 2])
    assert streamed[0] == in_memory[0]
    assert all(torch.equal(streamed[1][name], tensor) for name, tensor in in_memory[1].items())
    assert torch.equal(streamed[1]["layers.0.moe.experts.w1"], model.layers[0].moe.experts.w1[[*streamed[0][0], 7]])
