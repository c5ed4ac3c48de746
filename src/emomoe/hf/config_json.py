"""`config.json` of the Hugging Face layouts <-> our `ModelConfig`.

Reading accepts what emomoe can run exactly and names the file and field of anything else.
What an imported model becomes:
- routing is the HF inference routing: no document pool (`pool` and `eval_pool` off);
- attention is plain causal attention over the whole input (`doc_attention_mask` off), as in
  transformers;
- EMO's `num_experts` and `num_experts_per_tok` count the shared experts (the last ones of every
  layer), so our `top_k` (routed experts per token) is `num_experts_per_tok - num_shared_experts`;
- a dense EMO layer (`num_experts_per_layer[i] == 0`) is one shared expert without a gate, and so
  is every layer of the EMO release's dense baseline (`olmo2_noqknorm_prenorm`);
- a field left out takes the default of the layout's config class (`rms_norm_eps` is 1e-6 for EMO,
  1e-5 for the others).

Writing produces the EMO `config.json` with the same fields and meanings, plus `auto_map` to our
own model files and, only when on, emomoe's `qk_norm`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emomoe.errors import ConfigError, DataError
from emomoe.hf.layouts import EMO, is_dense_layer
from emomoe.io import read_json
from emomoe.model.config import ModelConfig, MoEConfig, RouterConfig

CONFIG_JSON = "config.json"
AUTO_MAP = {"AutoConfig": "configuration_emo.EmoConfig", "AutoModelForCausalLM": "modeling_emo.EmoForCausalLM"}
DEFAULT_ROPE_THETA = {"emo": 500000.0, "olmo2_noqknorm_prenorm": 10000.0, "olmoe": 10000.0, "mixtral": 1000000.0}
DEFAULT_RMS_NORM_EPS = {"emo": 1e-6, "olmo2_noqknorm_prenorm": 1e-5, "olmoe": 1e-5, "mixtral": 1e-5}
"""What each config class uses when its config.json leaves a field out."""
DEFAULT_MAX_POSITIONS = 4096
"""The EMO converter writes `max_position_embeddings: -1`; 4096 is the class default and the context trained on."""
_REQUIRED = object()


def read_config_json(path: Path) -> dict[str, Any]:
    """A config.json (or our copy of one) as a dict; DataError naming the file if it is not one."""
    if not path.exists():
        raise DataError(f"{path.parent}: no {path.name}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class _Fields:
    """Typed access to config.json fields; errors name the file and the field."""

    def __init__(self, data: dict[str, Any], path: Path):
        self.data, self.path = data, path

    def error(self, name: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {name} {self.data.get(name)!r} {problem}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
        if name not in self.data or (self.data[name] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise DataError(f"{self.path}: field '{name}' is missing")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise self.error(name, f"has the wrong type (expected {' or '.join(k.__name__ for k in kinds)})")
        return value

    def refuse(self, name: str, unsupported: bool, why: str) -> None:
        if unsupported:
            raise self.error(name, f"is not supported: {why}")


def model_config(data: dict[str, Any], path: Path) -> ModelConfig:
    """Our config for the config.json `data` (read from `path`) of one of the layouts we read."""
    f = _Fields(data, path)
    model_type = data["model_type"]
    hidden, heads = f.get("hidden_size", int), f.get("num_attention_heads", int)
    layers, vocab = f.get("num_hidden_layers", int), f.get("vocab_size", int)
    kv_heads = f.get("num_key_value_heads", int, heads)
    f.refuse("hidden_act", f.get("hidden_act", str, "silu") != "silu", "the experts are SwiGLU ('silu')")
    f.refuse("attention_bias", f.get("attention_bias", bool, False), "emomoe's projections have no bias")
    head_dim = hidden // heads
    f.refuse("head_dim", f.get("head_dim", int, head_dim) != head_dim, "must be hidden_size / num_attention_heads")
    f.refuse("rope_scaling", bool(f.get("rope_scaling", dict, None)), "emomoe applies plain RoPE")
    rope = f.get("rope_parameters", dict, {})
    f.refuse("rope_parameters", rope.get("rope_type", "default") != "default", "emomoe applies plain RoPE")
    theta = rope.get("rope_theta", f.get("rope_theta", (int, float), DEFAULT_ROPE_THETA[model_type]))
    max_positions = f.get("max_position_embeddings", int, DEFAULT_MAX_POSITIONS)
    eos = f.get("eos_token_id", (int, list), None)
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if isinstance(eos, int) and not 0 <= eos < vocab:
        raise f.error("eos_token_id", f"is outside the vocabulary (vocab_size {vocab})")
    moe, qk_norm = _MOE_READERS[model_type](f, layers)
    cfg = ModelConfig(
        vocab_size=vocab, d_model=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads if kv_heads != heads else None, qk_norm=qk_norm, rope_theta=float(theta),
        norm_eps=float(f.get("rms_norm_eps", (int, float), DEFAULT_RMS_NORM_EPS[model_type])),
        max_seq_len=max_positions if max_positions > 0 else DEFAULT_MAX_POSITIONS,
        doc_attention_mask=False, eos_id=eos if isinstance(eos, int) else None,
        init_std=float(f.get("initializer_range", (int, float), 0.02)), moe=moe,
    )
    try:
        cfg.check()
    except ConfigError as e:
        raise DataError(f"{path}: does not describe a model emomoe can build ({e})") from None
    return cfg


def _emo_moe(f: _Fields, layers: int) -> tuple[MoEConfig, bool]:
    num_experts, per_token = f.get("num_experts", int), f.get("num_experts_per_tok", int)
    shared = f.get("num_shared_experts", int, 0)
    f.refuse("num_shared_experts", shared > 1, "the official class weights several shared experts by a softmax")
    renormalize = f.get("norm_topk_prob", bool, False)
    for name in ("always_active_experts", "always_active_experts_per_layer"):
        f.refuse(name, bool(f.get(name, list, None)), "emomoe's always-on experts are the shared ones")
    ghost = f.get("ghost_extend_eval", (bool, str), False)
    f.refuse("ghost_extend_eval", ghost not in (False, "false"), "it is an evaluation probe")
    per_layer, hidden = _emo_layers(f, layers, num_experts, shared)
    top_k = per_token - shared
    f.refuse(
        "num_experts_per_tok", not 0 <= top_k <= num_experts - shared,
        f"must count the {shared} shared expert(s) and 0..{num_experts - shared} routed ones",
    )
    router = RouterConfig(num_shared_experts=shared, renormalize=renormalize)
    moe = MoEConfig(
        num_experts=num_experts, top_k=top_k, expert_hidden_size=hidden, num_experts_per_layer=per_layer, router=router
    )
    return moe, f.get("qk_norm", bool, False)


def _emo_layers(f: _Fields, layers: int, num_experts: int, shared: int) -> tuple[list[int] | None, int]:
    """Our per-layer expert counts (None: all `num_experts`) and expert width, from the official
    per-layer counts, where 0 is a dense layer: for us, its one shared expert."""
    hidden = f.get("intermediate_size", int)
    per_layer = f.get("num_experts_per_layer", list, None)
    if per_layer is None:
        return None, hidden
    if len(per_layer) != layers or not all(isinstance(n, int) and n >= 0 for n in per_layer):
        raise f.error("num_experts_per_layer", f"must list {layers} expert counts >= 0 (num_hidden_layers)")
    shared_per_layer = f.get("num_shared_experts_per_layer", list, None)
    f.refuse(
        "num_shared_experts_per_layer",
        shared_per_layer is not None and shared_per_layer != [min(shared, n) for n in per_layer],
        f"emomoe has one shared-expert count for all layers (num_shared_experts {shared})",
    )
    for i, n in enumerate(per_layer):
        f.refuse("num_experts_per_layer", 0 < n <= shared, f"layer {i} has only shared experts but is not dense (0)")
    if 0 in per_layer:
        dense = f.get("dense_intermediate_size", int)
        f.refuse("num_experts_per_layer", shared != 1, "a dense layer is emomoe's one shared expert: needs 1 shared")
        f.refuse("dense_mlp_bias", f.get("dense_mlp_bias", bool, False), "emomoe's MLPs have no bias")
        hidden = dense if all(n == 0 for n in per_layer) else hidden
        f.refuse(
            "dense_intermediate_size", dense != hidden, f"emomoe's dense layers are as wide as its experts ({hidden})"
        )
    ours = [max(n, 1) for n in per_layer]
    return (None if all(n == num_experts for n in ours) else ours), hidden


def _dense_moe(f: _Fields, layers: int) -> tuple[MoEConfig, bool]:
    # Every block's MLP is one SwiGLU: for us one always-on expert without a router, as in `dense-1b`.
    moe = MoEConfig(num_experts=1, top_k=0, expert_hidden_size=f.get("intermediate_size", int))
    return moe, False


def _olmoe_moe(f: _Fields, layers: int) -> tuple[MoEConfig, bool]:
    f.refuse("clip_qkv", f.get("clip_qkv", (int, float), None) is not None, "emomoe does not clip q, k and v")
    router = RouterConfig(num_shared_experts=0, renormalize=f.get("norm_topk_prob", bool, False))
    moe = MoEConfig(
        num_experts=f.get("num_experts", int), top_k=f.get("num_experts_per_tok", int),
        expert_hidden_size=f.get("intermediate_size", int), router=router,
    )
    return moe, True


def _mixtral_moe(f: _Fields, layers: int) -> tuple[MoEConfig, bool]:
    f.refuse("sliding_window", f.get("sliding_window", int, None) is not None, "emomoe attends to the whole context")
    # Mixtral rescales its top-k routing weights to sum to 1.
    router = RouterConfig(num_shared_experts=0, renormalize=True)
    moe = MoEConfig(
        num_experts=f.get("num_local_experts", int), top_k=f.get("num_experts_per_tok", int),
        expert_hidden_size=f.get("intermediate_size", int), router=router,
    )
    return moe, False


_MOE_READERS = {"emo": _emo_moe, "olmo2_noqknorm_prenorm": _dense_moe, "olmoe": _olmoe_moe, "mixtral": _mixtral_moe}


def check_exportable(cfg: ModelConfig) -> None:
    """Raise ConfigError naming the field if the EMO layout cannot express `cfg`."""
    router = cfg.moe.router
    if router.bias_update_rate > 0:
        raise ConfigError(
            f"moe.router.bias_update_rate: {router.bias_update_rate}; the HF EMO layout has no expert selection bias"
        )
    if router.num_shared_experts > 1:
        raise ConfigError(
            f"moe.router.num_shared_experts: {router.num_shared_experts}; the HF EMO class weights several shared "
            "experts by a softmax where emomoe uses 1.0, so at most 1 can be exported"
        )
    for layer in range(cfg.num_layers):
        routed = cfg.moe.routed_in_layer(layer)
        if 0 < routed < cfg.moe.top_k:
            raise ConfigError(
                f"moe.num_experts_per_layer[{layer}]: {cfg.moe.experts_in_layer(layer)} experts leave {routed} routed, "
                f"fewer than top_k {cfg.moe.top_k}; the HF EMO class routes every layer to top_k experts "
                "(num_experts_per_tok), so keep at least top_k routed experts in each layer, or none (a dense layer)"
            )


def emo_config_json(
    cfg: ModelConfig, *, eos_id: int, pad_id: int, dtype: str, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The EMO config.json of `cfg`. `base` (the config.json an imported model came with) supplies
    the fields emomoe does not model, such as `router_aux_loss_coef` or `output_router_logits`."""
    check_exportable(cfg)
    moe, shared = cfg.moe, cfg.moe.router.num_shared_experts
    per_layer = [0 if is_dense_layer(cfg, i) else moe.experts_in_layer(i) for i in range(cfg.num_layers)]
    replaced = ("qk_norm", "rope_parameters", "dtype", "num_shared_experts_per_layer")
    data = {k: v for k, v in (base or {}).items() if k not in replaced}
    data.update({
        "architectures": [EMO.architecture],
        "model_type": EMO.model_type,
        "auto_map": AUTO_MAP,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": moe.expert_hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": False,
        "num_experts": moe.num_experts,
        "num_experts_per_tok": moe.top_k + shared,
        "num_shared_experts": shared,
        "norm_topk_prob": moe.router.renormalize,
        "num_experts_per_layer": per_layer if any(n != moe.num_experts for n in per_layer) else None,
        "dense_intermediate_size": moe.expert_hidden_size if 0 in per_layer else None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "bos_token_id": data.get("bos_token_id"),
        "torch_dtype": dtype,
    })
    # The EMO converter turns router logits on, which gives HF fine-tuning its load-balancing loss.
    data.setdefault("output_router_logits", True)
    if cfg.qk_norm:
        data["qk_norm"] = True
    return data
