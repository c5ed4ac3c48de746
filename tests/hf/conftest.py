"""Tiny random Hugging Face checkpoints, built offline: EMO directories written the official way
(config.json fields and tensor names of the released checkpoints), and transformers' own OLMoE and
Mixtral models saved with `save_pretrained`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from emomoe.data.tokenizer import train_tokenizer

# Tests never reach a hub; transformers must not try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 300
EOS = 0
TEXTS = ["the cat sat on the mat", "def f(x): return x + 1", "a b c d e f g", "theorem: 1 + 1 = 2"] * 20


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """tokenizer.json (a byte-level BPE of 280 tokens, EOS id 0) + tokenizer_config.json, HF style."""
    tok = train_tokenizer(TEXTS, vocab_size=280)
    directory = tmp_path_factory.mktemp("tokenizer")
    (directory / "tokenizer.json").write_text(tok.tokenizer.to_str())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tok.eos_token, "pad_token": tok.eos_token}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def emo_config(**fields) -> dict:
    """config.json of a tiny EMO model, with the fields the official converter writes."""
    config = {
        "architectures": ["EmoForCausalLM"], "model_type": "emo",
        "auto_map": {"AutoConfig": "configuration_emo.EmoConfig", "AutoModelForCausalLM": "modeling_emo.EmoForCausalLM"},
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": -1,
        "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "rope_scaling": None, "attention_bias": False,
        "tie_word_embeddings": False, "initializer_range": 0.02, "num_experts": 6, "num_experts_per_tok": 3,
        "num_shared_experts": 1, "norm_topk_prob": False, "output_router_logits": True,
        "router_aux_loss_coef": 0.01, "eos_token_id": EOS, "pad_token_id": EOS, "bos_token_id": None,
        "torch_dtype": "float32",
    }
    config.update(fields)
    return config


def emo_state(config: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random weights under the official EMO names; gates are scaled up so routing is decisive."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.1):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    D, I, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    H, R = config["num_attention_heads"], config["num_key_value_heads"]
    hd = D // H
    layers = config["num_hidden_layers"]
    per_layer = config.get("num_experts_per_layer") or [config["num_experts"]] * layers
    state = {"model.embed_tokens.weight": rand(V, D, std=1.0), "model.norm.weight": 1 + rand(D), "lm_head.weight": rand(V, D)}
    for i, n in enumerate(per_layer):
        p = f"model.layers.{i}"
        state.update({
            f"{p}.pre_attention_layernorm.weight": 1 + rand(D), f"{p}.pre_feedforward_layernorm.weight": 1 + rand(D),
            f"{p}.self_attn.q_proj.weight": rand(H * hd, D), f"{p}.self_attn.k_proj.weight": rand(R * hd, D),
            f"{p}.self_attn.v_proj.weight": rand(R * hd, D), f"{p}.self_attn.o_proj.weight": rand(D, H * hd),
        })
        if n == 0:
            width = config["dense_intermediate_size"]
            state.update({f"{p}.mlp.gate_proj.weight": rand(width, D), f"{p}.mlp.up_proj.weight": rand(width, D),
                          f"{p}.mlp.down_proj.weight": rand(D, width)})
            continue
        state[f"{p}.mlp.gate.weight"] = rand(n, D, std=1.0)
        for j in range(n):
            state.update({f"{p}.mlp.experts.{j}.gate_proj.weight": rand(I, D), f"{p}.mlp.experts.{j}.up_proj.weight": rand(I, D),
                          f"{p}.mlp.experts.{j}.down_proj.weight": rand(D, I)})
    return state


def write_emo_dir(directory: Path, tokenizer_dir: Path | None, *, seed: int = 0, dtype=torch.float32, **fields) -> Path:
    """A HF EMO directory: config.json, model.safetensors, tokenizer files; returns it."""
    config = emo_config(**fields)
    return _write_hf_dir(directory, config, emo_state(config, seed, dtype), tokenizer_dir)


def _write_hf_dir(directory: Path, config: dict, state: dict[str, torch.Tensor], tokenizer_dir: Path | None) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            (directory / f.name).write_bytes(f.read_bytes())
    return directory


def dense_config(**fields) -> dict:
    """config.json of a tiny model of the EMO release's dense baseline (`Olmo2NoQKNormPrenormConfig`, an
    `Olmo2Config` with its own model_type), with the fields that class writes."""
    config = {
        "architectures": ["Olmo2NoQKNormPrenormForCausalLM"], "model_type": "olmo2_noqknorm_prenorm",
        "auto_map": {"AutoConfig": "configuration_olmo2_noqknorm_prenorm.Olmo2NoQKNormPrenormConfig",
                     "AutoModelForCausalLM": "modeling_olmo2_noqknorm_prenorm.Olmo2NoQKNormPrenormForCausalLM"},
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 4096,
        "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True, "pad_token_id": EOS, "bos_token_id": None,
        "eos_token_id": EOS, "tie_word_embeddings": False, "rope_theta": 500000.0, "rope_scaling": None,
        "attention_bias": False, "attention_dropout": 0.0, "torch_dtype": "float32",
    }
    config.update(fields)
    return config


def write_dense_dir(directory: Path, tokenizer_dir: Path | None, *, seed: int = 0, **fields) -> Path:
    """A HF directory of the dense baseline: config.json, model.safetensors, tokenizer files; returns it.
    Its tensors are EMO's dense-layer names: `emo_state` of an EMO config whose every layer is dense."""
    config = dense_config(**fields)
    as_emo = {**config, "num_experts_per_layer": [0] * config["num_hidden_layers"],
              "dense_intermediate_size": config["intermediate_size"]}
    return _write_hf_dir(directory, config, emo_state(as_emo, seed), tokenizer_dir)


def save_transformers_model(directory: Path, model_type: str, seed: int = 0, **fields):
    """A random OlmoeForCausalLM / MixtralForCausalLM saved with save_pretrained; returns the model."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, eos_token_id=EOS, pad_token_id=EOS, bos_token_id=None, num_experts_per_tok=2)
    common.update(fields)
    if model_type == "olmoe":
        config, cls = transformers.OlmoeConfig(num_experts=6, **common), transformers.OlmoeForCausalLM
    else:
        config, cls = transformers.MixtralConfig(num_local_experts=6, **common), transformers.MixtralForCausalLM
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # decisive routing, and norms away from 1 so they matter
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.mul_(20)
            elif "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def input_ids(batch: int = 2, seq: int = 12, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    """Random ids without EOS (so document handling cannot matter)."""
    return torch.randint(1, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
