import json

import pytest
import torch
from hypothesis import given
from safetensors.torch import load_file, save_file

from emomoe.checkpoint import CheckpointReader, load_config, load_for_inference, load_model
from emomoe.errors import DataError
from emomoe.hf.config_json import model_config
from emomoe.model import ModelConfig
from tests.fixtures import damaged, fuzz_settings, only_our_errors
from tests.hf.conftest import emo_config, emo_state, input_ids, save_transformers_model, write_emo_dir
from tests.hf.reference import reference_logits


def _emomoe_logits(directory, ids_BS):
    model, _ = load_for_inference(directory)
    with torch.no_grad():
        return model(ids_BS).logits


def _reference(directory, ids_BS):
    state = load_file(str(directory / "model.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    return torch.stack([reference_logits(state, config, row.tolist()) for row in ids_BS])


@pytest.mark.parametrize(
    "fields",
    [
        {},
        # a subset: fewer experts in some layers, as `num_experts_per_layer` says
        {"num_experts_per_layer": [6, 4, 3]},
        # a dense layer first, the official way (0 experts, dense_intermediate_size)
        {"num_experts_per_layer": [0, 6, 6], "dense_intermediate_size": 16},
        # a standard MoE without a shared expert, top-k renormalised
        {"num_shared_experts": 0, "num_experts_per_tok": 2, "norm_topk_prob": True},
    ],
    ids=["full", "subset", "dense-first", "no-shared"],
)
def test_an_emo_directory_loads_directly_with_the_official_semantics(tmp_path, tokenizer_dir, fields):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir, **fields)
    ids_BS = input_ids()
    torch.testing.assert_close(_emomoe_logits(directory, ids_BS).double(), _reference(directory, ids_BS), rtol=0, atol=1e-5)


def test_emo_config_fields_keep_their_meaning(tmp_path, tokenizer_dir):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir, num_experts_per_layer=[0, 6, 4], dense_intermediate_size=16)
    cfg = load_config(directory)
    # num_experts / num_experts_per_tok count the shared expert; a dense layer is its one shared expert.
    assert (cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.router.num_shared_experts) == (6, 2, 1)
    assert cfg.moe.num_experts_per_layer == [1, 6, 4]
    assert (cfg.num_kv_heads, cfg.max_seq_len, cfg.rope_theta, cfg.eos_id) == (2, 4096, 500000.0, 0)
    # HF inference: no document pool, causal attention over the whole input.
    assert cfg.moe.router.pool == cfg.moe.router.eval_pool == "off" and not cfg.doc_attention_mask
    with CheckpointReader(directory) as reader:
        assert reader.format == "hf-emo"
        assert reader.shape("layers.2.moe.experts.w1") == (4, 16, 32)
        stored = load_file(str(directory / "model.safetensors"))
        expert_3 = stored["model.layers.2.mlp.experts.3.down_proj.weight"]
        assert torch.equal(reader.get("layers.2.moe.experts.w2", rows=[3, 1])[0], expert_3)
        assert torch.equal(reader.get("layers.0.moe.experts.w3")[0], stored["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("preset, num_experts", [("std-1b14b", 128), ("std-1b4b", 32)])
def test_the_released_standard_moes_are_our_presets(tmp_path, preset, num_experts):
    # The config.json of allenai/StdMoE_1b14b_1T and allenai/StdMoE_1b4b_130B (spec section 7).
    config = emo_config(
        vocab_size=100352, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, num_experts=num_experts, num_experts_per_tok=8, eos_token_id=100257,
        pad_token_id=100277, max_position_embeddings=-1,
    )
    cfg = model_config(config, tmp_path / "config.json")
    # Imported models attend over the whole input, as transformers does.
    assert cfg == ModelConfig.preset(preset).with_overrides(["doc_attention_mask=false"])


@pytest.mark.parametrize("model_type", ["olmoe", "mixtral"])
def test_transformers_moe_directories_give_transformers_logits(tmp_path, model_type):
    reference = save_transformers_model(tmp_path / model_type, model_type, norm_topk_prob=True) if model_type == "olmoe" \
        else save_transformers_model(tmp_path / model_type, model_type)
    ids_BS = input_ids()
    with torch.no_grad():
        expected = reference(ids_BS).logits
    assert CheckpointReader(tmp_path / model_type).format == f"hf-{model_type}"
    torch.testing.assert_close(_emomoe_logits(tmp_path / model_type, ids_BS), expected, rtol=0, atol=1e-5)


def test_olmoe_without_renormalisation_and_the_reference_agree_with_transformers(tmp_path):
    """The slow reference the EMO tests rely on reproduces transformers' own OLMoE."""
    model = save_transformers_model(tmp_path / "olmoe", "olmoe", num_hidden_layers=1)
    ids_BS = input_ids(batch=1, seq=6)
    with torch.no_grad():
        expected = model(ids_BS).logits
    assert not load_config(tmp_path / "olmoe").moe.router.renormalize
    torch.testing.assert_close(_reference(tmp_path / "olmoe", ids_BS).float(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(_emomoe_logits(tmp_path / "olmoe", ids_BS), expected, rtol=0, atol=1e-5)


def _rewrite(directory, *, config=None, state=None):
    if config is not None:
        data = json.loads((directory / "config.json").read_text())
        data.update(config)
        (directory / "config.json").write_text(json.dumps(data))
    if state is not None:
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_another_model_type_is_named(tmp_path, tokenizer_dir):
    directory = write_emo_dir(tmp_path / "llama", tokenizer_dir)
    _rewrite(directory, config={"model_type": "llama"})
    with pytest.raises(DataError, match=r"llama/config.json: model_type 'llama' is not a layout emomoe reads"):
        load_model(directory)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"num_shared_experts": 2}, r"num_shared_experts 2 is not supported"),
        ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported"),
        ({"num_experts_per_layer": [6, 6]}, r"num_experts_per_layer \[6, 6\] must list 3 expert counts"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, r"rope_scaling .* is not supported"),
        ({"num_experts": "6"}, r"num_experts '6' has the wrong type"),
    ],
)
def test_unsupported_config_fields_are_named(tmp_path, tokenizer_dir, config, message):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir)
    _rewrite(directory, config=config)
    with pytest.raises(DataError, match=r"emo/config.json: " + message):
        load_config(directory)


def test_a_tensor_of_the_wrong_shape_is_named(tmp_path, tokenizer_dir):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir)
    state = load_file(str(directory / "model.safetensors"))
    state["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(32, 31)
    _rewrite(directory, state=state)
    with pytest.raises(DataError, match=r"model.safetensors: tensor 'model.layers.1.self_attn.q_proj.weight' has shape \[32, 31\]"):
        CheckpointReader(directory)


def test_one_expert_of_the_wrong_shape_is_named(tmp_path, tokenizer_dir):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir)
    state = load_file(str(directory / "model.safetensors"))
    state["model.layers.1.mlp.experts.4.down_proj.weight"] = torch.zeros(32, 8)
    _rewrite(directory, state=state)
    with pytest.raises(DataError, match=r"emo: tensor 'model.layers.1.mlp.experts.4.down_proj.weight' has shape \[32, 8\]"):
        CheckpointReader(directory)


@pytest.mark.parametrize("change", ["drop", "extra"])
def test_missing_and_unknown_tensors_are_named(tmp_path, tokenizer_dir, change):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir)
    state = load_file(str(directory / "model.safetensors"))
    if change == "drop":
        del state["model.layers.2.mlp.experts.5.up_proj.weight"]
        message = r"no tensor 'model.layers.2.mlp.experts.5.up_proj.weight'"
    else:
        state["model.layers.0.mlp.shared_expert_gate.weight"] = torch.zeros(1, 32)
        message = r"tensor 'model.layers.0.mlp.shared_expert_gate.weight' is not part of the emo model"
    _rewrite(directory, state=state)
    with pytest.raises(DataError, match=message):
        CheckpointReader(directory)


def test_a_missing_shard_is_named(tmp_path, tokenizer_dir):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir)
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    halves = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(directory / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    assert load_config(directory).num_layers == 3 and CheckpointReader(directory).format == "hf-emo"
    (directory / "model-00002-of-00002.safetensors").unlink()
    message = r"model.safetensors.index.json: names shard model-00002-of-00002.safetensors, which does not exist"
    with pytest.raises(DataError, match=message):
        CheckpointReader(directory)


def test_tied_embeddings_without_an_lm_head_read_the_embedding(tmp_path, tokenizer_dir):
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir, tie_word_embeddings=True)
    state = emo_state(json.loads((directory / "config.json").read_text()))
    del state["lm_head.weight"]
    _rewrite(directory, state=state)
    with CheckpointReader(directory) as reader:
        assert torch.equal(reader.get("lm_head.weight"), state["model.embed_tokens.weight"])
    ids_BS = input_ids(batch=1, seq=5)
    torch.testing.assert_close(_emomoe_logits(directory, ids_BS).double(), _reference(directory, ids_BS), rtol=0, atol=1e-5)


@pytest.mark.parametrize("tie", [False, None])
def test_no_lm_head_without_tied_embeddings_is_refused_not_tied(tmp_path, tokenizer_dir, tie):
    fields = {} if tie is None else {"tie_word_embeddings": tie}
    directory = write_emo_dir(tmp_path / "emo", tokenizer_dir, **fields)
    config = json.loads((directory / "config.json").read_text())
    if tie is None:
        config.pop("tie_word_embeddings")
        (directory / "config.json").write_text(json.dumps(config))
    state = emo_state(config)
    del state["lm_head.weight"]
    _rewrite(directory, state=state)
    with pytest.raises(DataError, match=r"emo: the weights have no 'lm_head\.weight', and config\.json does not tie it "
                                        r"to the embedding \(tie_word_embeddings: false\); transformers would leave"):
        CheckpointReader(directory)


def _sharded(directory):
    """The HF directory's weights in two shards with an index."""
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(directory / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return directory


@pytest.mark.parametrize("file", ["config.json", "model.safetensors.index.json"])
def test_fuzz_a_damaged_config_json_or_index_raises_only_our_errors(tmp_path, tokenizer_dir, file):
    directory = _sharded(write_emo_dir(tmp_path / "emo", tokenizer_dir))
    valid = (directory / file).read_bytes()

    @fuzz_settings()
    @given(damaged(valid))
    def read(data):
        (directory / file).write_bytes(data)
        only_our_errors(load_config, directory)
        reader = only_our_errors(CheckpointReader, directory)
        if reader is not None:
            only_our_errors(lambda: [reader.get(name) for name in reader.names()])

    read()
