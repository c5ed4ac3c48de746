"""`EmoForCausalLM` for transformers: the layout of the released EMO checkpoints, written for emomoe.

The tensor names are those of the official checkpoints, so one file loads in either class:
`model.layers.{i}.pre_attention_layernorm`, `.self_attn.{q,k,v,o}_proj`, `.pre_feedforward_layernorm`,
`.mlp.gate` (one row per expert, shared last) and `.mlp.experts.{j}.{gate,up,down}_proj`, or
`.mlp.{gate,up,down}_proj` for a dense layer.

Routing is the inference routing of the paper: no document pool, a softmax over the routed
experts' logits, their top k (`num_experts_per_tok` minus the shared expert, in every layer), plus
the shared expert with weight 1.0. Attention is causal over the whole input; with a KV cache
(`generate()`), the new tokens attend to the cached ones. RoPE angles are float32 products, as in
transformers and OLMo-core.

It fine-tunes in `transformers.Trainer` like the official class: with `output_router_logits` the
loss is the cross-entropy plus `router_aux_loss_coef` times the Switch load-balancing loss of
`load_balancing_loss`; the Trainer's `num_items_in_batch` (the label tokens of all accumulated
micro-batches) divides both, so gradient accumulation sums to the loss of the whole batch; and
every decoder layer can be recomputed in the backward pass (gradient checkpointing).

Legend: B batch, S sequence (the new tokens), P cache positions (cached and new), D model dim
(`hidden_size`), H query heads, R key/value heads, Dh head dim, A rotary frequencies (Dh/2), F ffn
hidden (of one expert), E experts of a layer, K routed experts per token, T = B*S tokens, V vocab,
L MoE layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast

from .configuration_emo import EmoConfig

# transformers renamed `past_key_values` to `cache` during 5.x; outputs carry whichever it knows.
CACHE_FIELD = "cache" if "cache" in MoeCausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class EmoRMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 whatever the weights are stored in, as the official class does.
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


class EmoMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)). One expert, or a dense layer."""

    def __init__(self, hidden: int, width: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=bias)
        self.up_proj = nn.Linear(hidden, width, bias=bias)
        self.down_proj = nn.Linear(width, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope(position_ids_BS: torch.Tensor, head_dim: int, theta: float):
    """float32 cos and sin [B, 1, S, Dh] of the rotate-half RoPE.

    The angles are float32 products of float32 inverse frequencies, the official computation (and
    transformers' and OLMo-core's): its rounding, about 1e-4 radians at position 4000, is part of
    what the released checkpoints compute, so exact angles would move their logits by ~1e-4.
    """
    exponents_A = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids_BS.device).float() / head_dim
    inv_freq_A = 1.0 / theta**exponents_A
    angles_BSA = position_ids_BS.float()[..., None] * inv_freq_A
    angles_BSDh = torch.cat([angles_BSA, angles_BSA], dim=-1)[:, None]
    return angles_BSDh.cos(), angles_BSDh.sin()


def rotate(x_BHSDh: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # In float32 (cos and sin are), rounded once to x's dtype, as the official class does.
    half = x_BHSDh.shape[-1] // 2
    rotated = x_BHSDh * cos + torch.cat([-x_BHSDh[..., half:], x_BHSDh[..., :half]], dim=-1) * sin
    return rotated.to(x_BHSDh.dtype)


class EmoAttention(nn.Module):
    def __init__(self, config: EmoConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.rope_theta = config.rope_theta
        d, hd = config.hidden_size, self.head_dim
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)
        if config.qk_norm:
            self.q_norm = EmoRMSNorm(self.num_heads * hd, config.rms_norm_eps)
            self.k_norm = EmoRMSNorm(self.num_kv_heads * hd, config.rms_norm_eps)

    def forward(self, x_BSD, cos, sin, mask_BSP, cache):
        """`mask_BSP` (True = may attend) is None for plain causal attention over the new tokens alone,
        or with a single new token."""
        B, S, _ = x_BSD.shape
        q, k, v = self.q_proj(x_BSD), self.k_proj(x_BSD), self.v_proj(x_BSD)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q_BHSDh = rotate(q.view(B, S, self.num_heads, -1).transpose(1, 2), cos, sin)
        k_BRPDh = rotate(k.view(B, S, self.num_kv_heads, -1).transpose(1, 2), cos, sin)
        v_BRPDh = v.view(B, S, self.num_kv_heads, -1).transpose(1, 2)
        if cache is not None:
            k_BRPDh, v_BRPDh = cache.update(k_BRPDh, v_BRPDh, self.layer_idx)
        if self.num_kv_heads != self.num_heads:
            k_BRPDh = k_BRPDh.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            v_BRPDh = v_BRPDh.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        out_BHSDh = F.scaled_dot_product_attention(
            q_BHSDh, k_BRPDh, v_BRPDh,
            attn_mask=None if mask_BSP is None else mask_BSP[:, None],
            is_causal=mask_BSP is None and S > 1,
        )
        return self.o_proj(out_BHSDh.transpose(1, 2).reshape(B, S, -1))


class EmoSparseMoeBlock(nn.Module):
    def __init__(self, config: EmoConfig, num_experts: int, num_shared: int):
        super().__init__()
        self.num_routed = num_experts - num_shared
        self.top_k = config.num_experts_per_tok - num_shared
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(EmoMLP(config.hidden_size, config.intermediate_size) for _ in range(num_experts))

    def forward(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output [B, S, D] and the router logits [T, E] (shared expert last)."""
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        logits_TE = self.gate(x_TD)
        out_TD = torch.zeros_like(x_TD)
        for shared in self.experts[self.num_routed :]:
            out_TD = out_TD + shared(x_TD)
        if self.num_routed:
            probs_TE = logits_TE[:, : self.num_routed].float().softmax(dim=-1)
            weights_TK, experts_TK = probs_TE.topk(self.top_k, dim=-1)
            if self.norm_topk_prob:
                weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
            weights_TK = weights_TK.to(x_TD.dtype)
            # Visit each expert once, with all of its tokens.
            order_N = experts_TK.flatten().argsort(stable=True)
            counts = torch.bincount(experts_TK.flatten(), minlength=self.num_routed).tolist()
            for e, slots_N in enumerate(order_N.split(counts)):
                if len(slots_N):
                    tokens_N = slots_N // self.top_k
                    y_ND = self.experts[e](x_TD[tokens_N]) * weights_TK.flatten()[slots_N, None]
                    out_TD = out_TD.index_add(0, tokens_N, y_ND)
        return out_TD.view_as(x_BSD), logits_TE


class EmoDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: EmoConfig, layer_idx: int):
        super().__init__()
        num_experts, num_shared = config.experts_in_layer(layer_idx)
        self.self_attn = EmoAttention(config, layer_idx)
        self.pre_attention_layernorm = EmoRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_feedforward_layernorm = EmoRMSNorm(config.hidden_size, config.rms_norm_eps)
        if num_experts == 0:
            self.mlp = EmoMLP(config.hidden_size, config.dense_intermediate_size, bias=config.dense_mlp_bias)
        else:
            self.mlp = EmoSparseMoeBlock(config, num_experts, num_shared)

    def forward(self, x_BSD, cos, sin, mask_BSP, cache=None):
        """The layer's output and its router logits [T, E] (None for a dense layer). The cache is a
        keyword argument: under gradient checkpointing, `GradientCheckpointingLayer` drops it, since
        the recomputation in the backward pass would write it a second time."""
        x_BSD = x_BSD + self.self_attn(self.pre_attention_layernorm(x_BSD), cos, sin, mask_BSP, cache)
        if isinstance(self.mlp, EmoMLP):
            return x_BSD + self.mlp(self.pre_feedforward_layernorm(x_BSD)), None
        y_BSD, logits_TE = self.mlp(self.pre_feedforward_layernorm(x_BSD))
        return x_BSD + y_BSD, logits_TE


class EmoPreTrainedModel(PreTrainedModel):
    config_class = EmoConfig
    base_model_prefix = "model"
    _no_split_modules = ["EmoDecoderLayer"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, EmoRMSNorm):
            nn.init.ones_(module.weight)


def attention_mask_BSP(padding_BP: torch.Tensor | None, positions_BS: torch.Tensor, num_cached: int):
    """Which keys each new token may see, or None when causal attention over the new tokens needs no mask.

    `padding_BP` is transformers' 2D mask over cached + new positions (1 = token, 0 = padding);
    key j is visible to query i when j <= num_cached + i and j is not padding. A padding query
    sees itself, so its row is never empty.
    """
    B, S = positions_BS.shape
    if (padding_BP is None or bool(padding_BP.all())) and (num_cached == 0 or S == 1):
        return None
    P = num_cached + S
    query_S = torch.arange(num_cached, P, device=positions_BS.device)
    key_P = torch.arange(P, device=positions_BS.device)
    mask_BSP = (key_P[None, :] <= query_S[:, None]).expand(B, S, P)
    if padding_BP is not None:
        mask_BSP = mask_BSP & padding_BP[:, None, -P:].bool()
    return mask_BSP | (key_P[None, None, :] == query_S[None, :, None])


class EmoModel(EmoPreTrainedModel):
    def __init__(self, config: EmoConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(EmoDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = EmoRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None):
        x_BSD = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, S, _ = x_BSD.shape
        num_cached = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(num_cached, num_cached + S, device=x_BSD.device).expand(B, S)
        mask_BSP = attention_mask_BSP(attention_mask, position_ids, num_cached)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rope(position_ids, head_dim, self.config.rope_theta)
        router_logits = []
        for layer in self.layers:
            x_BSD, logits_TE = layer(x_BSD, cos, sin, mask_BSP, cache=cache)
            if logits_TE is not None:
                router_logits.append(logits_TE)
        return MoeModelOutputWithPast(
            last_hidden_state=self.norm(x_BSD), router_logits=tuple(router_logits), **{CACHE_FIELD: cache}
        )


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...],
    config: EmoConfig,
    token_mask_T: torch.Tensor | None,
    num_items_in_batch: torch.Tensor | int | None,
) -> torch.Tensor:
    """The official class's Switch load-balancing loss, averaged over the MoE layers.

    For a layer with E routed experts, each token taking k (`num_experts_per_tok` minus the layer's
    shared experts): E / (N k) * sum_e count_e * mean_prob_e, where count_e is how many of the
    counted tokens chose expert e, mean_prob_e is the mean routed softmax probability of e over the
    counted tokens of this forward, and N is `num_items_in_batch` (the label tokens of the whole
    accumulated batch; this forward's counted tokens without it). The counted tokens are those of
    `token_mask_T` (all when None); the shared experts are left out.
    """
    moe_layers = [i for i in range(config.num_hidden_layers) if config.experts_in_layer(i)[0] > 0]
    mask_T1 = None if token_mask_T is None else token_mask_T.reshape(-1, 1).float()
    if num_items_in_batch is None:
        num_items_in_batch = router_logits[0].shape[0] if mask_T1 is None else mask_T1.sum()
    losses = []
    for layer, logits_TE in zip(moe_layers, router_logits):
        num_experts, num_shared = config.experts_in_layer(layer)
        num_routed, top_k = num_experts - num_shared, config.num_experts_per_tok - num_shared
        probs_TE = logits_TE[:, :num_routed].float().softmax(dim=-1)
        chosen_TE = torch.zeros_like(probs_TE).scatter_(1, probs_TE.topk(top_k, dim=-1).indices, 1.0)
        if mask_T1 is not None:
            probs_TE, chosen_TE = probs_TE * mask_T1, chosen_TE * mask_T1
        num_counted = probs_TE.shape[0] if mask_T1 is None else mask_T1.sum()
        mean_prob_E = probs_TE.sum(dim=0) / num_counted
        losses.append(num_routed * (chosen_TE.sum(dim=0) * mean_prob_E).sum() / (num_items_in_batch * top_k))
    return torch.stack(losses).mean()


class EmoForCausalLM(EmoPreTrainedModel, GenerationMixin):
    # Used only when config.json says `tie_word_embeddings: true` (transformers checks it).
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: EmoConfig):
        super().__init__(config)
        self.model = EmoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, output_loading_info=False, **kwargs):
        """transformers' loading, refusing weights without `lm_head.weight` that config.json does not tie
        to the embedding (transformers would only warn and leave the head random)."""
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if "lm_head.weight" in info["missing_keys"]:
            raise ValueError(
                "EmoForCausalLM: the weights have no 'lm_head.weight', and config.json does not tie it to the embedding "
                f"(tie_word_embeddings: {str(model.config.tie_word_embeddings).lower()}); the head would be random"
            )
        return (model, info) if output_loading_info else model

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        past_key_values=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        output_router_logits=None,
        num_items_in_batch=None,
        **kwargs,
    ):
        """Logits [B, S, V] (only the last `logits_to_keep` positions if > 0).

        With `labels` (-100 = not a target), the next-token cross-entropy: summed and divided by
        `num_items_in_batch` when the Trainer gives it, else the mean. With `output_router_logits`
        (default: the config's), also the router logits of every MoE layer and `aux_loss`, the
        load-balancing loss over the tokens whose label is not -100 (else the new tokens of
        `attention_mask`); with labels, `router_aux_loss_coef` times it is added to the loss.
        `cache` (`past_key_values` in older transformers) is a transformers `Cache`; one is created
        when `use_cache` is on."""
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        cache = cache if use_cache else None
        out = self.model(input_ids, attention_mask, position_ids, cache, inputs_embeds)
        hidden_BSD = out.last_hidden_state
        if logits_to_keep:
            hidden_BSD = hidden_BSD[:, -logits_to_keep:]
        logits_BSV = self.lm_head(hidden_BSD)
        loss = aux_loss = None
        if labels is not None:
            loss = self.loss_function(logits_BSV, labels, self.config.vocab_size, num_items_in_batch=num_items_in_batch)
        if output_router_logits and out.router_logits:
            # With a cache, attention_mask also covers the cached positions; the router saw only the new ones.
            new_mask = None if attention_mask is None else attention_mask[:, -out.last_hidden_state.shape[1] :]
            token_mask = labels != -100 if labels is not None else new_mask
            aux_loss = load_balancing_loss(out.router_logits, self.config, token_mask, num_items_in_batch)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss, aux_loss=aux_loss, logits=logits_BSV,
            router_logits=out.router_logits if output_router_logits else None, **{CACHE_FIELD: cache},
        )


__all__ = ["EmoForCausalLM", "EmoModel", "EmoPreTrainedModel"]
