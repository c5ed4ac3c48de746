import json

import pytest
import torch
from safetensors import safe_open

from emomoe.checkpoint import CheckpointReader, check_fits, load_config, load_for_inference, save_model
from emomoe.checkpoint.writer import INDEX_FILE
from emomoe.data.tokenizer import load_tokenizer, train_tokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.hf.convert import export_hf, import_hf
from emomoe.model import ModelConfig, build_model
from emomoe.select.keep import KeepSpec
from emomoe.select.subset import select_subset
from tests.fixtures import damage
from tests.hf.conftest import input_ids, save_transformers_model, write_dense_dir, write_emo_dir
from tests.hf.reference import reference_logits


def _tensors(directory):
    """Every tensor of a (sharded) safetensors directory by key, with its dtype."""
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _logits(directory, ids_BS):
    model, _ = load_for_inference(directory)
    with torch.no_grad():
        return model(ids_BS).logits


def _transformers_logits(directory, ids_BS):
    from transformers import AutoModelForCausalLM

    # float32 whatever the files store, as emomoe computes. In this process transformers prefers the
    # classes emomoe registered (the same file); tests/hf/remote runs the shipped copy without emomoe.
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(model).__name__ == "EmoForCausalLM"
    with torch.no_grad():
        return model(ids_BS).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_import_then_export_is_bit_exact(tmp_path, tokenizer_dir, dtype):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir, dtype=dtype, torch_dtype=str(dtype).removeprefix("torch."),
                           num_experts_per_layer=[0, 6, 4], dense_intermediate_size=16)
    import_hf(source, tmp_path / "ours")
    with CheckpointReader(tmp_path / "ours") as reader:
        assert reader.format == "emomoe" and reader.dtype("layers.1.moe.experts.w1") == dtype
    export_hf(tmp_path / "ours", tmp_path / "back")
    before, after = _tensors(source), _tensors(tmp_path / "back")
    assert sorted(before) == sorted(after)
    for key, tensor in before.items():
        assert after[key].dtype == dtype and torch.equal(after[key], tensor), key
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (source / name).read_bytes()
    config, back = (json.loads((d / "config.json").read_text()) for d in (source, tmp_path / "back"))
    # Every field keeps its value, except -1 for max_position_embeddings, which means the default 4096.
    assert back.pop("max_position_embeddings") == 4096 and config.pop("max_position_embeddings") == -1
    assert {k: back[k] for k in config} == config


def test_an_imported_emo_model_gives_the_reference_logits(tmp_path, tokenizer_dir):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir)
    import_hf(source, tmp_path / "ours")
    assert (tmp_path / "ours" / "model.yaml").is_file() and not (tmp_path / "ours" / "config.json").exists()
    ids_BS = input_ids(batch=1, seq=8)
    with safe_open(str(source / "model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    expected = reference_logits(state, json.loads((source / "config.json").read_text()), ids_BS[0].tolist())
    torch.testing.assert_close(_logits(tmp_path / "ours", ids_BS)[0].double(), expected, rtol=0, atol=1e-5)


def test_the_dense_baseline_imports_with_the_reference_logits_and_exports_as_dense_emo(tmp_path, tokenizer_dir):
    source = write_dense_dir(tmp_path / "hf", tokenizer_dir)
    import_hf(source, tmp_path / "ours")
    cfg = load_config(tmp_path / "ours")
    assert (cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.expert_hidden_size, cfg.qk_norm) == (1, 0, 48, False)
    ids_BS = input_ids(batch=1, seq=8)
    with safe_open(str(source / "model.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    expected = reference_logits(state, json.loads((source / "config.json").read_text()), ids_BS[0].tolist())
    torch.testing.assert_close(_logits(tmp_path / "ours", ids_BS)[0].double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(source, ids_BS)[0].double(), expected, rtol=0, atol=1e-5)  # read as it is
    export_hf(tmp_path / "ours", tmp_path / "emo")
    config = json.loads((tmp_path / "emo" / "config.json").read_text())
    assert config["num_experts_per_layer"] == [0, 0, 0] and config["dense_intermediate_size"] == 48
    exported = _tensors(tmp_path / "emo")
    assert sorted(exported) == sorted(state) and all(torch.equal(exported[k], state[k]) for k in state)
    torch.testing.assert_close(_transformers_logits(tmp_path / "emo", ids_BS)[0].double(), expected, rtol=0, atol=1e-5)


def test_a_field_the_dense_baseline_leaves_out_takes_its_classs_default(tmp_path):
    source = write_dense_dir(tmp_path / "hf", None, rms_norm_eps=None, rope_theta=None)
    cfg = load_config(source)
    assert (cfg.norm_eps, cfg.rope_theta) == (1e-5, 10000.0)  # Olmo2Config's defaults


def test_an_imported_olmoe_model_gives_transformers_logits_and_selects(tmp_path):
    model = save_transformers_model(tmp_path / "olmoe", "olmoe")
    import_hf(tmp_path / "olmoe", tmp_path / "ours")
    ids_BS = input_ids()
    with torch.no_grad():
        torch.testing.assert_close(_logits(tmp_path / "ours", ids_BS), model(ids_BS).logits, rtol=0, atol=1e-5)
    record = select_subset(tmp_path / "ours", tmp_path / "subset", keep=KeepSpec.parse("3"), method="random")
    assert load_config(tmp_path / "subset").moe.num_experts_per_layer == [3, 3] and record["keep"] == "3"


def test_an_imported_olmoe_model_exports_with_olmoes_logits(tmp_path, tokenizer_dir):
    """OLMoE's full-width QK-norm and renormalised top-k survive the trip into our EMO model file."""
    model = save_transformers_model(tmp_path / "olmoe", "olmoe", norm_topk_prob=True)
    import_hf(tmp_path / "olmoe", tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf", tokenizer=tokenizer_dir)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["qk_norm"] is True and config["norm_topk_prob"] is True and config["num_shared_experts"] == 0
    ids_BS = input_ids()
    with torch.no_grad():
        expected = model(ids_BS).logits
    torch.testing.assert_close(_transformers_logits(tmp_path / "hf", ids_BS), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(tmp_path / "hf", ids_BS), expected, rtol=0, atol=1e-5)  # and back in emomoe


def test_an_import_records_its_tokenizer_and_checksums_like_every_checkpoint(tmp_path, tokenizer_dir):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir)
    import_hf(source, tmp_path / "ours")
    assert load_config(tmp_path / "ours").tokenizer_hash == load_tokenizer(tokenizer_dir).hash
    other = train_tokenizer(["some other text entirely, with other merges"] * 50, 280)
    with pytest.raises(DataError, match=r"ours: the model was trained with tokenizer [0-9a-f]{12}, the data was made with"):
        check_fits(load_config(tmp_path / "ours"), tmp_path / "ours", vocab_size=280, seq_len=8, tokenizer_hash=other.hash)
    weights = tmp_path / "ours" / "model.safetensors"
    damage(weights, "flip")
    with pytest.raises(DataError, match=rf"{weights}: checksum mismatch"):
        load_for_inference(tmp_path / "ours")


def test_a_tokenizer_larger_than_the_vocabulary_stops_an_import(tmp_path, tokenizer_dir):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir, vocab_size=270)
    with pytest.raises(DataError, match=r"hf/tokenizer.json: the tokenizer's vocabulary \(280\) is larger than the model's \(270\)"):
        import_hf(source, tmp_path / "ours")
    assert not (tmp_path / "ours").exists()


def test_export_loads_in_transformers_with_emomoe_logits(tmp_path, tokenizer_dir):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").with_overrides(["vocab_size=300", "eos_id=0", "num_kv_heads=2", "moe.router.pool=off"])
    model = build_model(cfg)
    with torch.no_grad():
        for block in model.layers:
            block.moe.router.gate.weight.mul_(30)
    save_model(tmp_path / "ours", model, cfg)
    export_hf(tmp_path / "ours", tmp_path / "hf", tokenizer=tokenizer_dir)
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "configuration_emo.py", "modeling_emo.py", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json"} <= files
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_emo.EmoForCausalLM"
    assert (config["num_experts"], config["num_experts_per_tok"], config["num_shared_experts"]) == (8, 3, 1)
    assert config["num_experts_per_layer"] is None and "qk_norm" not in config
    ids_BS = input_ids(vocab=256)
    with torch.no_grad():
        ours = model.eval()(ids_BS).logits
    torch.testing.assert_close(_transformers_logits(tmp_path / "hf", ids_BS), ours, rtol=0, atol=1e-5)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 0 and generation["pad_token_id"] == 0


def test_a_subset_exports_as_a_smaller_emo_model(tmp_path, tokenizer_dir):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir)
    select_subset(source, tmp_path / "subset", keep=KeepSpec.parse("3,2,4"), method="random", seed=1)
    export_hf(tmp_path / "subset", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_experts_per_layer"] == [4, 3, 5] and config["num_experts_per_tok"] == 3
    tensors = _tensors(tmp_path / "out")
    assert tensors["model.layers.1.mlp.gate.weight"].shape == (3, 32)
    assert "model.layers.1.mlp.experts.2.up_proj.weight" in tensors and "model.layers.1.mlp.experts.3.up_proj.weight" not in tensors
    ids_BS = input_ids(batch=1, seq=8)
    ours = _logits(tmp_path / "subset", ids_BS)
    # The export means the same model under the official semantics and in transformers.
    expected = reference_logits(tensors, config, ids_BS[0].tolist())
    torch.testing.assert_close(ours[0].double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_transformers_logits(tmp_path / "out", ids_BS), ours, rtol=0, atol=1e-5)


def test_a_large_export_is_sharded_with_an_index(tmp_path, tokenizer_dir):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir)
    export_hf(source, tmp_path / "out", max_shard_size=40_000, dtype="bfloat16")
    index = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    tensors = _tensors(tmp_path / "out")
    assert set(index["weight_map"]) == set(tensors) and all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in tensors.values())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ids_BS = input_ids(batch=1, seq=6)
    torch.testing.assert_close(_transformers_logits(tmp_path / "out", ids_BS), _logits(tmp_path / "out", ids_BS), rtol=0, atol=1e-5)


def test_export_without_a_tokenizer_writes_nothing(tmp_path):
    cfg = ModelConfig.preset("tiny")
    save_model(tmp_path / "ours", build_model(cfg), cfg)
    with pytest.raises(DataError, match=r"ours: no tokenizer to export with the model"):
        export_hf(tmp_path / "ours", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_vocabulary_larger_than_the_models_is_refused(tmp_path, tokenizer_dir):
    cfg = ModelConfig.preset("tiny").with_overrides(["vocab_size=256"])  # the tokenizer has 280
    save_model(tmp_path / "ours", build_model(cfg), cfg)
    with pytest.raises(DataError, match=r"tokenizer.json: the tokenizer's vocabulary \(280\) is larger than the model's \(256\)"):
        export_hf(tmp_path / "ours", tmp_path / "out", tokenizer=tokenizer_dir)
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_needs_force(tmp_path, tokenizer_dir):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=r"out: already exists \(pass --force"):
        export_hf(source, tmp_path / "out")
    with pytest.raises(DataError, match=r"out: already exists"):
        import_hf(source, tmp_path / "out")
    # --force replaces an output of ours, never a user's folder.
    with pytest.raises(DataError, match=r"out: is a folder emomoe did not write"):
        export_hf(source, tmp_path / "out", force=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    (tmp_path / "out" / "notes.txt").unlink()
    export_hf(source, tmp_path / "out")  # an empty folder holds nothing to lose
    export_hf(source, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "config.json").is_file()


def test_models_the_emo_layout_cannot_express_are_refused(tmp_path, tokenizer_dir):
    cfg = ModelConfig.preset("tiny").with_overrides(["vocab_size=300", "moe.router.num_shared_experts=2"])
    save_model(tmp_path / "ours", build_model(cfg), cfg)
    with pytest.raises(ConfigError, match=r"moe.router.num_shared_experts: 2"):
        export_hf(tmp_path / "ours", tmp_path / "out", tokenizer=tokenizer_dir)
    assert not (tmp_path / "out").exists()
