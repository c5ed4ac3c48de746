"""Our models as llama.cpp architectures: which one computes a config exactly, and which GGUF tensor
comes from which of ours.

EMO and our standard MoE (a shared expert, no QK-norm, top-k weights not renormalised) become
llama.cpp's `deepseek`: its graph (src/models/deepseek.cpp) is EMO's inference graph, pre-norm
attention without QK-norm and with RoPE, then an MoE whose gate is a softmax over the routed
experts, the top `expert_used_count` weighted by their probabilities without renormalising, plus
an ungated shared SwiGLU added with weight 1. `deepseek2` (MLA attention), `qwen2moe` (a sigmoid
gate on its shared expert) and `olmoe` (QK-norm, no shared expert) compute something else.
Imported models without a shared expert map onto the architecture llama.cpp runs them with:
OLMoE (QK-norm over all heads, no renormalisation) onto `olmoe`, Mixtral (renormalised top-k)
onto `llama` with experts.

| GGUF (per block `blk.{i}.`)                     | emomoe (`layers.{i}.`)                                      |
|-------------------------------------------------|-------------------------------------------------------------|
| `token_embd`, `output_norm`, `output`            | `embed`, `norm`, `lm_head`                                  |
| `attn_norm`, `ffn_norm`                          | `attn_norm`, `moe_norm`                                     |
| `attn_q`, `attn_k`                               | `attn.q_proj`, `attn.k_proj` (rows permuted per head for NORM RoPE, below) |
| `attn_q_norm`, `attn_k_norm` (`olmoe`)           | `attn.q_norm`, `attn.k_norm`                                |
| `attn_v`, `attn_output`                          | `attn.v_proj`, `attn.o_proj`                                |
| `ffn_gate_inp` [E, D]                            | `moe.router.gate`, the routed experts' rows only            |
| `ffn_{gate,up,down}_exps` [E, ., .]              | `moe.experts.{w1,w3,w2}` of the routed experts              |
| `ffn_{gate,up}_shexp` [S*F, D], `ffn_down_shexp` [D, S*F] (`deepseek`) | the shared experts side by side, as `Experts._shared` runs them |

RoPE: we rotate the pairs (j, j + Dh/2) of a head, as llama.cpp's NEOX rope (`olmoe`) does; its
NORM rope (`deepseek`, `llama`) rotates (2j, 2j + 1). Interleaving the rows of each head of q and k
(j, j + Dh/2 -> 2j, 2j + 1) makes the two the same attention.

Legend: D model dim, E experts, F ffn hidden, N rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from emomoe.errors import ConfigError
from emomoe.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A llama.cpp architecture and the configs it computes exactly."""

    name: str
    qk_norm: bool
    shared_experts: bool
    renormalize: bool
    norm_rope: bool
    """llama.cpp rotates adjacent pairs (its NORM rope): q and k rows are interleaved per head."""


DEEPSEEK = Architecture("deepseek", qk_norm=False, shared_experts=True, renormalize=False, norm_rope=True)
OLMOE = Architecture("olmoe", qk_norm=True, shared_experts=False, renormalize=False, norm_rope=False)
LLAMA = Architecture("llama", qk_norm=False, shared_experts=False, renormalize=True, norm_rope=True)
ARCHITECTURES = (DEEPSEEK, OLMOE, LLAMA)


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file: where it comes from in our checkpoint and how it is reshaped."""

    name: str
    source: str
    rows: range | None = None
    """Only these indices of dim 0 of `source` (the routed or the shared experts); None: all."""
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    matrix: bool = True
    """A weight matrix, stored in the file's type; norms and the router stay float32, as in
    llama.cpp's converters (the router picks experts: rounding it can change the choice)."""

    def shape(self, source_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The tensor's shape in the file (numpy order) given its source's, without reading it."""
        rows = len(self.rows) if self.rows is not None else source_shape[0]
        return tuple(self.apply(torch.empty(rows, *source_shape[1:], device="meta")).shape)

    def apply(self, source: torch.Tensor) -> torch.Tensor:
        return self.transform(source) if self.transform else source


def architecture(cfg: ModelConfig) -> Architecture:
    """The llama.cpp architecture that runs `cfg` exactly; ConfigError naming the field if none does."""
    moe, router = cfg.moe, cfg.moe.router
    refusals = [
        ("moe.router.bias_update_rate", router.bias_update_rate > 0, "llama.cpp has no expert selection bias"),
        ("moe.num_experts_per_layer", len({moe.experts_in_layer(i) for i in range(cfg.num_layers)}) > 1,
         "llama.cpp has one expert count for every layer (select with one --keep count or fraction, not "
         "per-layer counts, --budget-gb or --keep-params)"),
        ("moe.num_experts", moe.routed_in_layer(0) == 0, "llama.cpp's MoE architectures need routed experts"),
    ]
    for field, refused, why in refusals:
        if refused:
            raise _refuse(cfg, field, why)
    shared = router.num_shared_experts > 0
    for arch in ARCHITECTURES:
        if (arch.qk_norm, arch.shared_experts, arch.renormalize) == (cfg.qk_norm, shared, router.renormalize):
            if arch.qk_norm and cfg.kv_heads != cfg.num_heads:
                raise _refuse(cfg, "num_kv_heads", f"llama.cpp's {arch.name} norms keys as wide as queries")
            return arch
    if router.renormalize and shared:
        raise _refuse(cfg, "moe.router.renormalize", "llama.cpp's deepseek does not renormalise the top-k weights")
    if cfg.qk_norm:
        raise _refuse(cfg, "qk_norm", "llama.cpp has QK-norm only in olmoe, without shared experts or renormalising")
    raise _refuse(cfg, "moe.router.num_shared_experts",
                  "without shared experts llama.cpp runs renormalised top-k (llama) or QK-norm (olmoe) only")


def _refuse(cfg: ModelConfig, field: str, why: str) -> ConfigError:
    value = cfg
    for part in field.split("."):
        value = getattr(value, part)
    return ConfigError(f"{field}: {value!r} cannot be exported to GGUF: {why}")


def gguf_tensors(cfg: ModelConfig, arch: Architecture) -> list[GGUFTensor]:
    """Every tensor of the GGUF file of `cfg` as `arch`, in file order."""
    D = cfg.d_model
    q_rows = _rope_rows(cfg.num_heads) if arch.norm_rope else None
    k_rows = _rope_rows(cfg.kv_heads) if arch.norm_rope else None
    tensors = [GGUFTensor("token_embd.weight", "embed.weight")]
    for i in range(cfg.num_layers):
        ours, blk = f"layers.{i}.", f"blk.{i}."
        routed, shared = range(cfg.moe.routed_in_layer(i)), range(cfg.moe.routed_in_layer(i), cfg.moe.experts_in_layer(i))
        tensors += [
            GGUFTensor(blk + "attn_norm.weight", ours + "attn_norm.weight", matrix=False),
            GGUFTensor(blk + "attn_q.weight", ours + "attn.q_proj.weight", transform=q_rows),
            GGUFTensor(blk + "attn_k.weight", ours + "attn.k_proj.weight", transform=k_rows),
            GGUFTensor(blk + "attn_v.weight", ours + "attn.v_proj.weight"),
            GGUFTensor(blk + "attn_output.weight", ours + "attn.o_proj.weight"),
        ]
        if arch.qk_norm:
            tensors += [
                GGUFTensor(blk + "attn_q_norm.weight", ours + "attn.q_norm.weight", matrix=False),
                GGUFTensor(blk + "attn_k_norm.weight", ours + "attn.k_norm.weight", matrix=False),
            ]
        tensors += [
            GGUFTensor(blk + "ffn_norm.weight", ours + "moe_norm.weight", matrix=False),
            GGUFTensor(blk + "ffn_gate_inp.weight", ours + "moe.router.gate.weight", routed, matrix=False),
            GGUFTensor(blk + "ffn_gate_exps.weight", ours + "moe.experts.w1", routed),
            GGUFTensor(blk + "ffn_up_exps.weight", ours + "moe.experts.w3", routed),
            GGUFTensor(blk + "ffn_down_exps.weight", ours + "moe.experts.w2", routed),
        ]
        if arch.shared_experts:
            tensors += [
                GGUFTensor(blk + "ffn_gate_shexp.weight", ours + "moe.experts.w1", shared,
                           lambda w_EFD: w_EFD.reshape(-1, D)),
                GGUFTensor(blk + "ffn_up_shexp.weight", ours + "moe.experts.w3", shared,
                           lambda w_EFD: w_EFD.reshape(-1, D)),
                GGUFTensor(blk + "ffn_down_shexp.weight", ours + "moe.experts.w2", shared,
                           lambda w_EDF: w_EDF.transpose(0, 1).reshape(D, -1)),
            ]
    return tensors + [
        GGUFTensor("output_norm.weight", "norm.weight", matrix=False),
        GGUFTensor("output.weight", "lm_head.weight"),
    ]


def _rope_rows(num_heads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reorder each head's rows from rotate-half pairs (j, j + Dh/2) to adjacent pairs (2j, 2j + 1)."""

    def interleave(w_ND: torch.Tensor) -> torch.Tensor:
        rows, d_in = w_ND.shape
        return w_ND.reshape(num_heads, 2, rows // num_heads // 2, d_in).transpose(1, 2).reshape(rows, d_in)

    return interleave


def add_hparams(writer, cfg: ModelConfig, arch: Architecture) -> None:
    """The `{arch}.*` keys llama.cpp reads for `cfg`."""
    moe = cfg.moe
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(moe.expert_hidden_size)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_expert_count(moe.routed_in_layer(0))
    writer.add_expert_used_count(moe.top_k_in_layer(0))
    if arch.shared_experts:
        writer.add_leading_dense_block_count(0)
        writer.add_expert_shared_count(moe.router.num_shared_experts)
        writer.add_expert_feed_forward_length(moe.expert_hidden_size)
        writer.add_expert_weights_scale(1.0)
