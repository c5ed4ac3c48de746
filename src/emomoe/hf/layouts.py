"""The Hugging Face checkpoint layouts emomoe reads (EMO, its dense baseline, OLMoE, Mixtral) and writes (EMO).

A `Layout` holds what differs between these decoder-only MoE families in their safetensors
names; `tensor_keys` spells out, for one of our configs, where each of our tensors lives:

| emomoe                                  | EMO (`EmoForCausalLM`)                               | OLMoE / Mixtral                |
|-----------------------------------------|------------------------------------------------------|--------------------------------|
| `embed.weight`                          | `model.embed_tokens.weight`                          | same                           |
| `layers.{i}.attn_norm.weight`           | `model.layers.{i}.pre_attention_layernorm.weight`    | `...input_layernorm.weight`    |
| `layers.{i}.attn.{q,k,v,o}_proj.weight` | `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`   | same                           |
| `layers.{i}.attn.{q,k}_norm.weight`     | `model.layers.{i}.self_attn.{q,k}_norm.weight`       | OLMoE only                     |
| `layers.{i}.moe_norm.weight`            | `model.layers.{i}.pre_feedforward_layernorm.weight`  | `...post_attention_layernorm.weight` |
| `layers.{i}.moe.router.gate.weight`     | `model.layers.{i}.mlp.gate.weight` (shared rows last)| Mixtral: `block_sparse_moe.gate` |
| `layers.{i}.moe.experts.w1[j]`          | `model.layers.{i}.mlp.experts.{j}.gate_proj.weight`  | Mixtral: `block_sparse_moe.experts.{j}.w1` |
| `layers.{i}.moe.experts.w3[j]`          | `...mlp.experts.{j}.up_proj.weight`                  | Mixtral: `...w3`               |
| `layers.{i}.moe.experts.w2[j]`          | `...mlp.experts.{j}.down_proj.weight`                | Mixtral: `...w2`               |
| `norm.weight`, `lm_head.weight`         | `model.norm.weight`, `lm_head.weight`                | same                           |

Our experts are stacked ([E, out, in]); HF stores one [out, in] matrix per expert, so each stacked
tensor is a list of keys, one per row. A layer whose only expert is a shared one (no gate, as in
`dense-1b`) is EMO's dense layer: `model.layers.{i}.mlp.{gate,up,down}_proj.weight`. The EMO
release's dense baseline (`olmo2_noqknorm_prenorm`, `Olmo2NoQKNormPrenormForCausalLM`) has EMO's
names with a dense layer in every block. With tied embeddings (no `lm_head.weight` in the files)
our LM head reads the embedding.
"""

from __future__ import annotations

import dataclasses

from emomoe.model.config import ModelConfig

OUR_PROJECTIONS = ("w1", "w3", "w2")
"""Our stacked expert tensors in SwiGLU order: gate, up, down."""
DENSE_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class Layout:
    model_type: str
    architecture: str
    attn_norm: str
    moe_norm: str
    moe_module: str
    """The decoder layer's submodule holding the gate and the experts."""
    expert_projections: tuple[str, str, str]
    """HF names of one expert's gate, up and down matrices (our w1, w3, w2)."""


EMO = Layout("emo", "EmoForCausalLM", "pre_attention_layernorm", "pre_feedforward_layernorm", "mlp", DENSE_PROJECTIONS)
DENSE = Layout(
    "olmo2_noqknorm_prenorm", "Olmo2NoQKNormPrenormForCausalLM", "pre_attention_layernorm",
    "pre_feedforward_layernorm", "mlp", DENSE_PROJECTIONS,
)
"""The EMO release's dense baseline (OLMo-2 without QK-norm, pre-norm): EMO's dense layer in every block."""
OLMOE = Layout("olmoe", "OlmoeForCausalLM", "input_layernorm", "post_attention_layernorm", "mlp", DENSE_PROJECTIONS)
MIXTRAL = Layout(
    "mixtral", "MixtralForCausalLM", "input_layernorm", "post_attention_layernorm", "block_sparse_moe",
    ("w1", "w3", "w2"),
)
LAYOUTS = {layout.model_type: layout for layout in (EMO, DENSE, OLMOE, MIXTRAL)}


def is_dense_layer(cfg: ModelConfig, layer: int) -> bool:
    """A layer of one always-on expert and no router: EMO's dense MLP."""
    return cfg.moe.routed_in_layer(layer) == 0


def tensor_keys(cfg: ModelConfig, layout: Layout, *, tied: bool = False) -> dict[str, str | tuple[str, ...]]:
    """Our tensor name -> its HF key, or one key per row for stacked experts.

    `tied`: the files have no LM head and it shares the input embedding.
    """
    keys: dict[str, str | tuple[str, ...]] = {
        "embed.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "model.embed_tokens.weight" if tied else "lm_head.weight",
    }
    attention = ("q_proj", "k_proj", "v_proj", "o_proj") + (("q_norm", "k_norm") if cfg.qk_norm else ())
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        keys[f"{ours}.attn_norm.weight"] = f"{hf}.{layout.attn_norm}.weight"
        keys[f"{ours}.moe_norm.weight"] = f"{hf}.{layout.moe_norm}.weight"
        for proj in attention:
            keys[f"{ours}.attn.{proj}.weight"] = f"{hf}.self_attn.{proj}.weight"
        moe = f"{hf}.{layout.moe_module}"
        if is_dense_layer(cfg, i):
            for w, proj in zip(OUR_PROJECTIONS, DENSE_PROJECTIONS):
                keys[f"{ours}.moe.experts.{w}"] = (f"{moe}.{proj}.weight",)
            continue
        keys[f"{ours}.moe.router.gate.weight"] = f"{moe}.gate.weight"
        for w, proj in zip(OUR_PROJECTIONS, layout.expert_projections):
            keys[f"{ours}.moe.experts.{w}"] = tuple(
                f"{moe}.experts.{j}.{proj}.weight" for j in range(cfg.moe.experts_in_layer(i))
            )
    return keys
