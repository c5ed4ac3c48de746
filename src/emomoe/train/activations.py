"""Activation memory of one training micro-batch, counted from what the model saves for its backward.

Legend: B batch, S sequence, T tokens (B*S), D model dim, H heads, R key/value heads, Dh head dim,
E experts, K experts per token, N rows (T*K routed slots), F ffn hidden, V vocab.

Each tensor the forward of `EmoTransformer` keeps for the backward is one `Saved` term, with its
element count and its bytes per element in a float32 run and under bf16 autocast. The float32 terms
are exact for our model on the CPU: `tests/train/test_activations.py` checks them against the
tensors autograd actually saves (`saved_tensors_hooks`) for configs that vary every dimension.
Under bf16 autocast (GPUs) matmul outputs take 2 bytes, a linear keeps its own bf16 copy of an fp32
input, and the residual stream, norm statistics, router probabilities and indices stay as they
are. That part is an estimate: it follows autocast's rules, but this CPU runs float32 only.

Autocast also keeps a bf16 copy of every weight matrix from the forward to the backward; that is
counted with the weights (`autocast_weight_bytes`), not here.

Peak activation memory = everything saved, plus the largest transient (the LM head's block of
logits). With activation checkpointing (`train.parallel.checkpoint_activations`) each block keeps
only what lies outside its recomputed attention and experts, and the inputs of those two, plus, in
the backward, one recomputed part at a time.
"""

from __future__ import annotations

import collections
import dataclasses
import enum

from emomoe.model.config import ModelConfig
from emomoe.model.losses import lm_head_chunk_rows
from emomoe.train.config import Precision

INDEX, FLOAT, BOOL, INT32 = 8, 4, 1, 4
"""Bytes of an int64 index, a float32, a bool and an int32 element."""


class Region(enum.Enum):
    """Where a saved tensor is made, which decides whether activation checkpointing keeps it."""

    KEPT = "kept"
    """Outside the recomputed parts: norms, the residual stream, the router."""
    ATTENTION = "attention"
    """Inside the attention, recomputed with activation checkpointing."""
    EXPERTS = "experts"
    """Inside the experts, recomputed with activation checkpointing."""


@dataclasses.dataclass(frozen=True)
class Saved:
    name: str
    elements: int
    fp32_bytes: int
    """Bytes per element in a float32 run (0: not saved in that run)."""
    bf16_bytes: int
    """Bytes per element under bf16 autocast (0: not saved)."""
    region: Region = Region.KEPT

    def nbytes(self, precision: Precision) -> int:
        return self.elements * (self.bf16_bytes if precision is Precision.BF16 else self.fp32_bytes)


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """The shape of one micro-batch and how the model runs it."""

    batch_size: int
    seq_len: int
    precision: Precision = Precision.FP32
    fused_kernels: bool = False
    """emomoe's fused CPU kernels run (float32 on a CPU that built them): the SwiGLU then keeps
    two [rows, F] tensors instead of three. GPUs run the PyTorch ops."""

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len


def layer_terms(cfg: ModelConfig, layer: int, mb: MicroBatch) -> list[Saved]:
    """What block `layer` saves for the backward."""
    T, D, B, S = mb.tokens, cfg.d_model, mb.batch_size, mb.seq_len
    q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    attn = Region.ATTENTION
    terms = [
        Saved("attention norm input", T * D, FLOAT, FLOAT),
        Saved("attention norm statistics", T, FLOAT, FLOAT),
        # One fp32 tensor read by q, k and v; under autocast each projection casts its own copy.
        Saved("q/k/v projection input", T * D, FLOAT, 3 * 2, attn),
        Saved("queries after RoPE", T * q_width, FLOAT, 2, attn),
        Saved("keys after RoPE", T * kv_width, FLOAT, 2, attn),
        Saved("values", T * kv_width, FLOAT, 2, attn),
        Saved("attention log-sum-exp", T * cfg.num_heads, FLOAT, FLOAT, attn),
        Saved("attention output", T * q_width, FLOAT, 2, attn),
    ]
    if cfg.qk_norm:
        terms += [
            Saved("QK-norm inputs", T * (q_width + kv_width), FLOAT, 2, attn),
            Saved("QK-norm statistics", 2 * T, FLOAT, FLOAT, attn),
        ]
    if cfg.doc_attention_mask:
        # Attention converts the boolean document mask into an additive float mask, per layer.
        terms.append(Saved("additive document mask", B * S * S, FLOAT, 2, attn))
    terms += [
        Saved("MoE norm input", T * D, FLOAT, FLOAT),
        Saved("MoE norm statistics", T, FLOAT, FLOAT),
    ]
    return terms + _moe_terms(cfg, layer, mb)


def _moe_terms(cfg: ModelConfig, layer: int, mb: MicroBatch) -> list[Saved]:
    T, D, F = mb.tokens, cfg.d_model, cfg.moe.expert_hidden_size
    moe, experts = cfg.moe, Region.EXPERTS
    routed, total = moe.routed_in_layer(layer), moe.experts_in_layer(layer)
    silu = 0 if mb.fused_kernels else 1  # the PyTorch SwiGLU keeps silu(g) as well
    terms = []
    if routed:
        K = moe.top_k_in_layer(layer)
        terms += [
            # fp32: the one tensor the gate, the shared experts and the routed gather read; bf16:
            # the gate's own cast (the shared experts' casts are theirs, below).
            Saved("router input", T * D, FLOAT, 2),
            Saved("gate output", T * total, FLOAT, 2),
            Saved("routing probabilities", T * routed, FLOAT, FLOAT),
            Saved("chosen experts", T * K, INDEX, INDEX),
            *_top_probability_terms(T, routed, K, moe.router.bias_update_rate > 0, moe.router.pool != "off"),
            Saved("router log-sum-exp", T, FLOAT, FLOAT),
            Saved("expert load fractions", routed, FLOAT, FLOAT),
        ]
        terms += _routed_terms(T * K, D, F, routed, silu)
    shared = total - routed
    if shared:
        Fs = shared * F
        # A dense layer (no router) has no gate to keep its input: the shared experts keep it.
        input_bytes = (0, 2 * 2) if routed else (FLOAT, 2 * 2)
        terms += [
            Saved("shared experts' input", T * D, *input_bytes, experts),
            # Several shared experts' down projections side by side are a copy, not a view.
            Saved("shared experts' down weights", D * Fs if shared > 1 else 0, FLOAT, 2, experts),
            Saved("shared experts' gate and up projections", 2 * T * Fs, FLOAT, 2, experts),
            Saved("shared experts' silu", silu * T * Fs, FLOAT, 2, experts),
            Saved("shared experts' hidden", T * Fs, FLOAT, 2, experts),
        ]
    return terms


def _top_probability_terms(T: int, E: int, K: int, biased: bool, pool: bool) -> list[Saved]:
    """The router z-loss reads each token's most probable expert: the first chosen weight (a view
    that keeps all K), or, when a selection bias may pass it over, a max of its own; the biased
    selection also keeps the pool mask it applies."""
    if not biased:
        return [Saved("chosen weights", T * K, FLOAT, FLOAT)]
    terms = [Saved("top probability", T, FLOAT, FLOAT), Saved("top expert", T, INDEX, INDEX)]
    return terms + [Saved("pool mask of the biased selection", T * E, BOOL, BOOL)] if pool else terms


def _routed_terms(N: int, D: int, F: int, routed: int, silu: int) -> list[Saved]:
    experts = Region.EXPERTS
    terms = [
        Saved("slot order and token of each slot", 2 * N, INDEX, INDEX, experts),
        Saved("expert offsets", 3 * routed, INT32, INT32, experts),
        Saved("routed slots' input", N * D, FLOAT, 2 * 2, experts),
        Saved("routed gate and up projections", 2 * N * F, FLOAT, 2, experts),
        Saved("routed silu", silu * N * F, FLOAT, 2, experts),
        Saved("routed hidden", N * F, FLOAT, 2, experts),
        Saved("routing weights per slot", N, FLOAT, FLOAT, experts),
    ]
    # The routing weight scales whichever side of the down projection is narrower
    # (`Experts._routed`); either way two more tensors stay until the backward.
    if F < D:
        terms += [
            Saved("weighted hidden", N * F, FLOAT, 2, experts),
            Saved("down projection output", N * D, FLOAT, 2, experts),
        ]
    else:
        terms += [
            Saved("down projection output", N * D, FLOAT, 2, experts),
            Saved("weighted output", N * D, FLOAT, FLOAT, experts),
        ]
    return terms


def model_terms(cfg: ModelConfig, mb: MicroBatch) -> list[Saved]:
    """What the embedding, the final norm and the LM head save (once per micro-batch)."""
    T, D, V = mb.tokens, cfg.d_model, cfg.vocab_size
    return [
        Saved("token ids", T, INDEX, INDEX),
        Saved("final norm input", T * D, FLOAT, FLOAT),
        Saved("final norm statistics", T, FLOAT, FLOAT),
        # float32: the fused LM head computes the gradients of its input and weight in the forward
        # and keeps them. Under autocast the logits are made and a float32 log-softmax is kept.
        Saved("LM head input gradient", T * D, FLOAT, 0),
        Saved("LM head weight gradient", V * D, FLOAT, 0),
        Saved("LM head input", T * D, 0, 2),
        Saved("log-probabilities", T * V, 0, FLOAT),
        Saved("labels", T, 0, INDEX),
    ]


def lm_head_transient_bytes(cfg: ModelConfig, mb: MicroBatch) -> int:
    """The LM head's memory beyond what it saves, at its peak: a block of logits in float32; under
    autocast the bf16 logits and their float32 copy next to the log-softmax being made."""
    V = cfg.vocab_size
    if mb.precision is Precision.BF16:
        return mb.tokens * V * (2 + FLOAT)
    return min(lm_head_chunk_rows(V, FLOAT), mb.tokens) * V * FLOAT


def checkpoint_input_terms(cfg: ModelConfig, layer: int, mb: MicroBatch) -> list[Saved]:
    """With activation checkpointing, what block `layer` keeps as inputs of its recomputed parts
    beyond what it keeps anyway: the fp32 norm outputs (a float32 router keeps the experts' one)."""
    T, D = mb.tokens, cfg.d_model
    router_keeps_it = cfg.moe.routed_in_layer(layer) > 0
    return [
        Saved("attention input (checkpointed)", T * D, FLOAT, FLOAT),
        Saved("experts' input (checkpointed)", T * D, 0 if router_keeps_it else FLOAT, FLOAT),
    ]


@dataclasses.dataclass(frozen=True)
class Activations:
    saved: int
    """Bytes saved for the backward once the forward is done."""
    transient: int
    """The largest memory on top of `saved` at any moment (LM head logits; with checkpointing, the
    recomputed part of one block during its backward)."""
    largest: tuple[tuple[str, int], ...] = ()
    """The three saved terms that take the most, each summed over the layers: (name, bytes)."""

    @property
    def peak(self) -> int:
        return self.saved + self.transient


def activation_memory(cfg: ModelConfig, mb: MicroBatch, checkpointing: bool = False) -> Activations:
    """Activation memory of one micro-batch, with or without activation checkpointing."""
    layers = [layer_terms(cfg, i, mb) for i in range(cfg.num_layers)]
    transient = lm_head_transient_bytes(cfg, mb)
    if checkpointing:
        kept = [t for terms in layers for t in terms if t.region is Region.KEPT]
        kept += [t for i in range(cfg.num_layers) for t in checkpoint_input_terms(cfg, i, mb)]
        if cfg.doc_attention_mask:  # one boolean mask, an input of every recomputed attention
            kept.append(Saved("boolean document mask", mb.batch_size * mb.seq_len**2, BOOL, BOOL))
        recomputed = max(
            sum(t.nbytes(mb.precision) for t in terms if t.region is region)
            for terms in layers for region in (Region.ATTENTION, Region.EXPERTS)
        )
        transient = max(transient, recomputed)
    else:
        kept = [t for terms in layers for t in terms]
    kept += model_terms(cfg, mb)
    by_name: collections.Counter[str] = collections.Counter()
    for t in kept:
        by_name[t.name] += t.nbytes(mb.precision)
    return Activations(sum(by_name.values()), transient, tuple(by_name.most_common(3)))
