"""Parameter names: emomoe <-> Hugging Face `EmoForCausalLM` (EMO_SPEC.md section 7).

Every emomoe tensor maps to exactly one HF tensor, except the stacked expert weights, whose
slices map one-to-one onto HF's per-expert matrices:

| emomoe                                   | HF `EmoForCausalLM`                                      |
|------------------------------------------|----------------------------------------------------------|
| `embed.weight`                           | `model.embed_tokens.weight`                              |
| `layers.{i}.attn_norm.weight`            | `model.layers.{i}.input_layernorm.weight`                |
| `layers.{i}.attn.{q,k,v,o}_proj.weight`  | `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`       |
| `layers.{i}.attn.{q,k}_norm.weight`      | `model.layers.{i}.self_attn.{q,k}_norm.weight`           |
| `layers.{i}.moe_norm.weight`             | `model.layers.{i}.post_attention_layernorm.weight`       |
| `layers.{i}.moe.router.gate.weight`      | `model.layers.{i}.mlp.gate.weight` (all rows, shared last)|
| `layers.{i}.moe.router.score_bias_E`     | `model.layers.{i}.mlp.gate.e_score_correction_bias`      |
| `layers.{i}.moe.experts.w1[j]`           | `model.layers.{i}.mlp.experts.{j}.gate_proj.weight`      |
| `layers.{i}.moe.experts.w3[j]`           | `model.layers.{i}.mlp.experts.{j}.up_proj.weight`        |
| `layers.{i}.moe.experts.w2[j]`           | `model.layers.{i}.mlp.experts.{j}.down_proj.weight`      |
| `norm.weight`                            | `model.norm.weight`                                      |
| `lm_head.weight`                         | `lm_head.weight`                                         |

A layer with a single expert and no gate (no routed experts, e.g. `dense-1b`) is HF's dense
layer: its w1/w3/w2 map to `model.layers.{i}.mlp.{gate,up,down}_proj.weight`. The score bias
exists only with bias balancing on; HF EMO has no such tensor (the name follows DeepSeek-V3).
All matrices keep their orientation ([out, in], as `nn.Linear` stores them).
"""

from __future__ import annotations

import re

import torch

from emomoe.errors import DataError

# Templates: {i} is a layer index, {proj} an attention projection or norm.
_RENAMES = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.{proj}.weight", "model.layers.{i}.self_attn.{proj}.weight"),
    ("layers.{i}.moe_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.moe.router.gate.weight", "model.layers.{i}.mlp.gate.weight"),
    ("layers.{i}.moe.router.score_bias_E", "model.layers.{i}.mlp.gate.e_score_correction_bias"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
_FIELDS = {"i": r"\d+", "proj": "q_proj|k_proj|v_proj|o_proj|q_norm|k_norm"}
_EXPERT_PROJ = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_PROJ_EXPERT = {v: k for k, v in _EXPERT_PROJ.items()}
_OURS_EXPERTS = re.compile(r"layers\.(\d+)\.moe\.experts\.(w1|w2|w3)")
_OURS_GATE = re.compile(r"layers\.(\d+)\.moe\.router\.gate\.weight")
_HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
_HF_DENSE = re.compile(r"model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight")


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    # re.split alternates literal text and field names.
    return re.compile(
        "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for k, p in enumerate(parts))
    )


_TO_HF = [(_template_regex(ours), hf) for ours, hf in _RENAMES]
_FROM_HF = [(_template_regex(hf), ours) for ours, hf in _RENAMES]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in table:
        if m := pattern.fullmatch(name):
            return target.format(**m.groupdict())
    return None


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an emomoe state dict to HF names, splitting stacked experts into per-expert matrices."""
    gated_layers = {m.group(1) for n in state if (m := _OURS_GATE.fullmatch(n))}
    out = {}
    for name, tensor in state.items():
        if m := _OURS_EXPERTS.fullmatch(name):
            layer, which = m.groups()
            proj = _EXPERT_PROJ[which]
            if layer not in gated_layers and tensor.shape[0] == 1:
                out[f"model.layers.{layer}.mlp.{proj}.weight"] = tensor[0]
                continue
            for j in range(tensor.shape[0]):
                out[f"model.layers.{layer}.mlp.experts.{j}.{proj}.weight"] = tensor[j]
        elif (hf_name := _rename(name, _TO_HF)) is not None:
            out[hf_name] = tensor
        else:
            raise DataError(f"parameter '{name}' has no Hugging Face EMO name")
    return out


def from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an HF `EmoForCausalLM` state dict to emomoe names, stacking per-expert matrices."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for name, tensor in state.items():
        if m := _HF_EXPERT.fullmatch(name):
            layer, j, proj = m.groups()
            experts.setdefault((layer, _PROJ_EXPERT[proj]), {})[int(j)] = tensor
        elif m := _HF_DENSE.fullmatch(name):
            layer, proj = m.groups()
            experts.setdefault((layer, _PROJ_EXPERT[proj]), {})[0] = tensor
        elif (ours := _rename(name, _FROM_HF)) is not None:
            out[ours] = tensor
        else:
            raise DataError(f"Hugging Face parameter '{name}' is not part of the EMO layout")
    for (layer, which), by_index in experts.items():
        if sorted(by_index) != list(range(len(by_index))):
            raise DataError(f"layer {layer}: expert indices {sorted(by_index)} are not 0..{len(by_index) - 1}")
        out[f"layers.{layer}.moe.experts.{which}"] = torch.stack([by_index[j] for j in range(len(by_index))])
    return out
