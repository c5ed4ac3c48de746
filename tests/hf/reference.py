"""A slow, literal forward pass of the HF layouts, written from the official modeling files'
semantics (not from emomoe's code): float64, one position at a time, one expert at a time. The RoPE
angles alone are float32, as every official class computes them (transformers' default RoPE: float32
inverse frequencies times a float32 position); at position 4000 exact angles differ by ~1e-4. The EMO
release's dense baseline (`modeling_olmo2_noqknorm_prenorm.py`) is OLMo-2 with its QK-norm removed
and its norms moved before attention and the MLP: EMO's dense layer in every block.

It is the independent reference the EMO tests compare against (transformers' own classes are the
reference for OLMoE and Mixtral, and `test_reference_matches_transformers` checks this one against
them too).
"""

from __future__ import annotations

import functools

import torch

NAMES = {
    # model_type: (attention norm, feed-forward norm, MoE module, expert projections gate/up/down)
    "emo": ("pre_attention_layernorm", "pre_feedforward_layernorm", "mlp", ("gate_proj", "up_proj", "down_proj")),
    "olmo2_noqknorm_prenorm": ("pre_attention_layernorm", "pre_feedforward_layernorm", "mlp", ()),
    "olmoe": ("input_layernorm", "post_attention_layernorm", "mlp", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("input_layernorm", "post_attention_layernorm", "block_sparse_moe", ("w1", "w3", "w2")),
}


def rms_norm(x, weight, eps):
    return x / torch.sqrt((x * x).mean() + eps) * weight


def swiglu(x, gate, up, down):
    a = gate @ x
    return down @ (a * torch.sigmoid(a) * (up @ x))


@functools.cache
def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The float32 inverse frequencies of transformers' default RoPE, which the official classes use."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=head_dim, num_attention_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    return LlamaRotaryEmbedding.compute_default_rope_parameters(config)[0]


def rope(x_Dh, position, theta):
    half = x_Dh.shape[0] // 2
    inv_freq = inverse_frequencies(x_Dh.shape[0], float(theta))
    out = torch.empty_like(x_Dh)
    for i in range(half):
        angle = (torch.tensor(position, dtype=torch.float32) * inv_freq[i]).double()  # one float32 product
        c, s = torch.cos(angle), torch.sin(angle)
        out[i] = x_Dh[i] * c - x_Dh[i + half] * s
        out[i + half] = x_Dh[i + half] * c + x_Dh[i] * s
    return out


def reference_logits(state: dict[str, torch.Tensor], config: dict, ids: list[int], first_position: int = 0) -> torch.Tensor:
    """Logits [S, V] of one sequence whose first token is at `first_position`, float64."""
    w = {k: v.double() for k, v in state.items()}
    model_type = config["model_type"]
    attn_norm, ffn_norm, moe_module, projections = NAMES[model_type]
    D, H = config["hidden_size"], config["num_attention_heads"]
    R = config.get("num_key_value_heads") or H
    hd, eps = D // H, config["rms_norm_eps"]
    theta = config.get("rope_theta") or config["rope_parameters"]["rope_theta"]
    shared = config.get("num_shared_experts", 0)
    num_experts = config.get("num_experts", config.get("num_local_experts"))
    per_layer = config.get("num_experts_per_layer") or [num_experts] * config["num_hidden_layers"]
    if model_type == "olmo2_noqknorm_prenorm":  # the dense baseline: one SwiGLU MLP in every layer
        per_layer = [0] * config["num_hidden_layers"]
    renormalize = config.get("norm_topk_prob", model_type == "mixtral")
    xs = [w["model.embed_tokens.weight"][i] for i in ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        keys, values, outs = [], [], []
        for t, x in enumerate(xs):
            h = rms_norm(x, w[f"{p}.{attn_norm}.weight"], eps)
            q, k, v = (w[f"{p}.self_attn.{n}_proj.weight"] @ h for n in "qkv")
            if model_type == "olmoe":
                q = rms_norm(q, w[f"{p}.self_attn.q_norm.weight"], eps)
                k = rms_norm(k, w[f"{p}.self_attn.k_norm.weight"], eps)
            keys.append([rope(k[r * hd : (r + 1) * hd], first_position + t, theta) for r in range(R)])
            values.append([v[r * hd : (r + 1) * hd] for r in range(R)])
            heads = []
            for head in range(H):
                qh = rope(q[head * hd : (head + 1) * hd], first_position + t, theta)
                r = head // (H // R)
                scores = torch.stack([qh @ keys[s][r] for s in range(t + 1)]) / hd**0.5
                heads.append(sum(a * values[s][r] for s, a in enumerate(torch.softmax(scores, 0))))
            outs.append(x + w[f"{p}.self_attn.o_proj.weight"] @ torch.cat(heads))
        xs = []
        for x in outs:
            h = rms_norm(x, w[f"{p}.{ffn_norm}.weight"], eps)
            if per_layer[layer] == 0:  # EMO's dense layer, or the dense baseline's MLP
                y = swiglu(h, *(w[f"{p}.mlp.{n}.weight"] for n in ("gate_proj", "up_proj", "down_proj")))
            else:
                expert = lambda j: swiglu(h, *(w[f"{p}.{moe_module}.experts.{j}.{n}.weight"] for n in projections))  # noqa: E731
                logits = w[f"{p}.{moe_module}.gate.weight"] @ h
                routed = per_layer[layer] - shared
                probs = torch.softmax(logits[:routed], 0)
                top = sorted(range(routed), key=lambda j: -probs[j])[: config["num_experts_per_tok"] - shared]
                total = sum(probs[j] for j in top) if renormalize else 1.0
                y = sum(probs[j] / total * expert(j) for j in top)
                y = y + sum(expert(j) for j in range(routed, per_layer[layer]))
            xs.append(x + y)
    final = [rms_norm(x, w["model.norm.weight"], eps) for x in xs]
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return torch.stack([head @ x for x in final])
