"""Model configuration: the transformer, its MoE layers, the router and the loss weights.

`ModelConfig.preset(name)` gives the paper's architectures (`emo-1b14b`, `std-1b14b`, its
memory-matched baselines `std-1b4b` and `dense-1b`) and the CPU-sized ones (`tiny` for tests,
`small` for the demo). EMO and the standard MoE differ only in `moe.router.pool`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from emomoe.config import Config, ranged
from emomoe.errors import ConfigError, DataError


class LBScope(enum.StrEnum):
    """Which tokens the load-balancing loss counts expert assignments over."""

    GLOBAL = "global"
    """Counts are summed over the whole data-parallel group before the loss (the paper's setting)."""
    LOCAL = "local"
    """Counts come from this rank's micro-batch only (the ablation that destabilises EMO)."""


def parse_pool(text: str, name: str) -> tuple[int, int] | None:
    """Parse a pool field: "off" -> None, "32" -> (32, 32), "8..128" -> (8, 128).

    Raises ConfigError naming `name` for anything else.
    """
    text = str(text).strip()
    if text == "off":
        return None
    lo, sep, hi = text.partition("..")
    try:
        bounds = (int(lo), int(hi)) if sep else (int(text), int(text))
    except ValueError:
        raise ConfigError(f"{name}: '{text}' is not 'off', a size like '32' or a range like '8..128'") from None
    if bounds[0] < 1 or bounds[0] > bounds[1]:
        raise ConfigError(f"{name}: '{text}' must satisfy 1 <= min <= max")
    return bounds


@dataclass
class RouterConfig(Config):
    pool: str = "off"
    """EMO document pool in training: "off" (standard MoE), a fixed size "32", or "min..max"
    drawn uniformly per (document, layer); sizes >= the routed expert count mean no restriction."""
    eval_pool: str = "off"
    """Pool used in eval mode: "off" (the HF inference behaviour) or a fixed size."""
    num_shared_experts: int = ranged(1, ge=0)
    """Always-on experts with weight 1.0; they are the LAST indices of every layer's experts."""
    renormalize: bool = False
    """Rescale the routed top-k weights to sum to 1 (the paper does not)."""
    lb_scope: LBScope = LBScope.GLOBAL
    lb_window: int = ranged(1, ge=1)
    """Training forwards whose expert counts the LB loss sums: 1 is the paper's (this batch only);
    more judges balance over more documents than one batch holds, with the mean probabilities
    (the gradient) still from this batch. Counts of earlier forwards are taken after the
    `lb_scope` reduction."""
    bias_update_rate: float = ranged(0.0, ge=0)
    """DeepSeek-V3-style balancing: per-expert selection bias moved by this much per update
    (`EmoTransformer.update_router_biases`); 0 turns it off."""

    def validate(self) -> None:
        parse_pool(self.pool, "pool")
        if (eval_pool := parse_pool(self.eval_pool, "eval_pool")) and eval_pool[0] != eval_pool[1]:
            raise ConfigError(f"eval_pool: '{self.eval_pool}' must be 'off' or a fixed size, not a range")


@dataclass
class MoEConfig(Config):
    num_experts: int = ranged(128, ge=1)
    """Experts per layer INCLUDING the shared ones (HF `num_experts`)."""
    top_k: int = ranged(7, ge=0)
    """Routed experts per token (shared experts come on top). Clamped per layer to the routed
    experts present, so sliced subsets with few experts keep working."""
    expert_hidden_size: int = ranged(1024, ge=1)
    num_experts_per_layer: list[int] | None = None
    """Per-layer totals (shared included) for sliced subset models; overrides num_experts."""
    router: RouterConfig = field(default_factory=RouterConfig)

    def experts_in_layer(self, layer: int) -> int:
        return self.num_experts_per_layer[layer] if self.num_experts_per_layer else self.num_experts

    def routed_in_layer(self, layer: int) -> int:
        return self.experts_in_layer(layer) - self.router.num_shared_experts

    def top_k_in_layer(self, layer: int) -> int:
        return min(self.top_k, self.routed_in_layer(layer))

    def validate(self) -> None:
        shared = self.router.num_shared_experts
        if shared > self.num_experts:
            raise ConfigError(
                f"router.num_shared_experts: {shared} is more than the {self.num_experts} experts (num_experts)"
            )
        routed = self.num_experts - shared
        if self.top_k > routed:
            raise ConfigError(
                f"top_k: {self.top_k} must be between 0 and the {routed} routed experts "
                f"(num_experts {self.num_experts} - router.num_shared_experts {shared})"
            )
        if routed > 0 and self.top_k == 0:
            raise ConfigError(f"top_k: 0 leaves the {routed} routed experts unused; use >= 1")
        for name in ("pool", "eval_pool"):
            bounds = parse_pool(getattr(self.router, name), f"router.{name}")
            if bounds and bounds[0] < self.top_k:
                raise ConfigError(
                    f"router.{name}: '{getattr(self.router, name)}' allows pools of {bounds[0]} experts, "
                    f"fewer than top_k {self.top_k}"
                )
        for i, n in enumerate(self.num_experts_per_layer or []):
            if n < shared:
                raise ConfigError(
                    f"num_experts_per_layer[{i}]: {n} is fewer than router.num_shared_experts {shared}"
                )


@dataclass
class LossConfig(Config):
    lb_weight: float = 0.1
    """Switch-style load balancing, summed over layers."""
    router_z_weight: float = 0.001
    """Router z-loss on the (pool-masked) routed logits, summed over layers."""
    logit_z_weight: float = 1e-5
    """z-loss on the output logits."""


@dataclass
class ModelConfig(Config):
    vocab_size: int = ranged(100352, ge=1)
    d_model: int = ranged(2048, ge=1)
    num_layers: int = ranged(16, ge=1)
    num_heads: int = ranged(16, ge=1)
    num_kv_heads: int | None = ranged(None, ge=1)
    """Key/value heads for grouped-query attention; None means num_heads (plain MHA)."""
    qk_norm: bool = False
    rope_theta: float = 500000.0
    norm_eps: float = 1e-6
    max_seq_len: int = ranged(4096, ge=1)
    doc_attention_mask: bool = True
    """Tokens attend only within their own document (same doc id) as well as causally."""
    eos_id: int | None = 100257
    """Token that ends a document; used to derive doc ids when the caller passes none (None: each
    row is one document). Set it from the token store when training on your own tokenizer."""
    tokenizer_hash: str | None = None
    """sha256 of the tokenizer the model was trained with (set from the token store by the trainer).
    Evaluation, selection and fine-tuning refuse data made with another tokenizer; None: unknown."""
    init_std: float = 0.02
    moe: MoEConfig = field(default_factory=MoEConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def validate(self) -> None:
        if self.d_model % self.num_heads or self.head_dim % 2:
            raise ConfigError(f"num_heads: d_model {self.d_model} / {self.num_heads} heads must be an even integer")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_kv_heads: {self.num_kv_heads} must divide num_heads {self.num_heads}")
        if self.eos_id is not None and not 0 <= self.eos_id < self.vocab_size:
            raise ConfigError(f"eos_id: {self.eos_id} is outside the vocabulary (vocab_size {self.vocab_size})")
        per_layer = self.moe.num_experts_per_layer
        if per_layer is not None and len(per_layer) != self.num_layers:
            raise ConfigError(
                f"moe.num_experts_per_layer: has {len(per_layer)} entries, expected num_layers = {self.num_layers}"
            )

    def check_tokenizer(
        self, tokenizer_hash: str | None, where: object, *, given: str = "the data was made with",
        any_tokenizer: bool = False,
    ) -> None:
        """The provenance check of every verb that takes data or a tokenizer: DataError unless
        `tokenizer_hash` (of the data or tokenizer `given`) is the tokenizer this model was trained
        with, when both are known. Another tokenizer of the same size runs without an error and gives
        meaningless numbers; `any_tokenizer` allows it on purpose (a retokenized copy of the same text)."""
        if tokenizer_hash and self.tokenizer_hash and tokenizer_hash != self.tokenizer_hash and not any_tokenizer:
            raise DataError(
                f"{where}: the model was trained with tokenizer {self.tokenizer_hash[:12]}, {given} "
                f"{tokenizer_hash[:12]}; results would be meaningless (pass --any-tokenizer / any_tokenizer=True "
                "to go ahead)"
            )

    def num_params(self, embeddings: bool = True) -> tuple[int, int]:
        """(total, active-per-token) parameter counts; `embeddings=False` drops embedding and LM head."""
        d, hd = self.d_model, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.kv_heads)
        if self.qk_norm:
            attn += hd * (self.num_heads + self.kv_heads)
        total = active = self.num_layers * (attn + 2 * d) + d
        expert = 3 * d * self.moe.expert_hidden_size
        for layer in range(self.num_layers):
            routed = self.moe.routed_in_layer(layer)
            gate = self.moe.experts_in_layer(layer) * d if routed else 0
            total += gate + self.moe.experts_in_layer(layer) * expert
            active += gate + (self.moe.top_k_in_layer(layer) + self.moe.router.num_shared_experts) * expert
        if embeddings:
            total += 2 * self.vocab_size * d
            active += 2 * self.vocab_size * d
        return total, active

    def summary(self) -> str:
        total, active = self.num_params()
        _, active_body = self.num_params(embeddings=False)
        m = self.moe
        kind = f"EMO pool {m.router.pool}" if m.router.pool != "off" else "standard routing"
        return (
            f"ModelConfig: {self.num_layers} layers, d_model {self.d_model}, {self.num_heads} heads, "
            f"vocab {self.vocab_size}, {m.num_experts} experts ({m.router.num_shared_experts} shared, "
            f"top-{m.top_k} routed, hidden {m.expert_hidden_size}), {kind}; "
            f"params total {_human(total)}, active {_human(active)} ({_human(active_body)} without embeddings)"
        )

    __str__ = summary

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        if name not in _PRESETS:
            raise ConfigError(f"unknown model preset '{name}' (choose from {', '.join(_PRESETS)})")
        cfg = _PRESETS[name]()
        cfg.check()
        return cfg


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _emo_1b14b() -> ModelConfig:
    return ModelConfig(moe=MoEConfig(router=RouterConfig(pool="8..128")))


def _std_1b14b() -> ModelConfig:
    return ModelConfig()


def _std_1b4b() -> ModelConfig:
    # "Reg. MoE @ 32" (allenai/StdMoE_1b4b_130B): the std-1b14b backbone with 32 experts (31 routed + 1
    # shared) per layer, as many as an EMO subset keeping 32: about 3.9B parameters in all.
    return ModelConfig(moe=MoEConfig(num_experts=32))


def _dense_1b() -> ModelConfig:
    # One always-on expert of hidden 8192 and no routed experts is the dense SwiGLU baseline.
    return ModelConfig(moe=MoEConfig(num_experts=1, top_k=0, expert_hidden_size=8192))


def _tiny() -> ModelConfig:
    return ModelConfig(
        vocab_size=512, d_model=32, num_layers=2, num_heads=4, max_seq_len=128, eos_id=None,
        moe=MoEConfig(num_experts=8, top_k=2, expert_hidden_size=32, router=RouterConfig(pool="2..8")),
    )


def _small() -> ModelConfig:
    # Sized on the 2-core CPU with bench/router.py (batch 16 x 256, fp32, fwd+bwd+AdamW): about
    # 6,700-7,800 tokens/s, EMO and standard alike; compute-bound, with the LM head and the experts
    # each about 40% of the FLOPs. Expert hidden 128 trades capacity for roughly 15% more speed.
    return ModelConfig(
        vocab_size=8192, d_model=128, num_layers=4, num_heads=4, max_seq_len=256, eos_id=None,
        moe=MoEConfig(num_experts=32, top_k=3, expert_hidden_size=192, router=RouterConfig(pool="4..32")),
    )


_PRESETS = {
    "tiny": _tiny,
    "small": _small,
    "emo-1b14b": _emo_1b14b,
    "std-1b14b": _std_1b14b,
    "std-1b4b": _std_1b4b,
    "dense-1b": _dense_1b,
}

