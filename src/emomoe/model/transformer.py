"""The decoder-only MoE transformer: pre-norm blocks of attention and an MoE layer, untied LM head.

Legend: B batch, S sequence, T = B*S tokens, D model dim, V vocab, E routed experts of a layer,
K routed experts per token, P cache positions, W window (past steps of the load-balancing window).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from emomoe.errors import ConfigError
from emomoe.model.attention import Attention, rope_tables
from emomoe.model.config import ModelConfig, parse_pool
from emomoe.model.docs import Segments, doc_ids_from_eos
from emomoe.model.experts import Experts
from emomoe.model.init import init_weight_
from emomoe.model.kv_cache import KVCache, LayerKV
from emomoe.model.linear import Linear, is_stored_narrower
from emomoe.model.losses import LMHeadLoss, lm_head_loss
from emomoe.model.moe import MoE
from emomoe.model.norm import RMSNorm
from emomoe.model.pool import PoolSampler, seed_tensors
from emomoe.model.router import Router


@dataclass
class LayerRouting:
    router_logits_TE: torch.Tensor
    """Routed-expert logits before any pool mask (shared experts excluded), in the gate's compute
    dtype (bf16 under bf16 autocast) and attached to the graph: a loss may use them."""
    experts_TK: torch.Tensor
    """Routed experts chosen per token (int64), indices into the layer's routed experts."""
    weights_TK: torch.Tensor
    """The chosen experts' routing probabilities (over the document's pool while one is active;
    renormalised to sum to 1 with `renormalize`), in the gate's compute dtype."""


@dataclass
class ModelOutput:
    """What `EmoTransformer.forward` returns, in training and eval mode alike.

    Given `labels_BS` outside autocast, the LM head computes CE and logit z fused (`lm_loss`) and
    `logits` is None. Under autocast the labels are not used: `logits` come back in the autocast
    dtype and the caller computes the CE from them (`compute_loss` does, in float32). So it is for
    an LM head stored narrower than the activations or quantized (`emomoe.model.linear`), which the
    fused head cannot read.
    """

    logits: torch.Tensor | None
    """[B, S, V] in the LM head's compute dtype: float32 for float32 weights, bf16 under bf16
    autocast; None when the forward was given labels outside autocast (see `lm_loss`)."""
    lb_loss: torch.Tensor | None
    """Load-balancing loss summed over MoE layers, unweighted (0-dim; float32 for float32 weights,
    under autocast too); None when the forward skipped the router losses, by default in eval mode
    without autograd (see `aux_losses`)."""
    router_z_loss: torch.Tensor | None
    """Router z-loss summed over MoE layers, unweighted, like `lb_loss`; None with it."""
    routing: list[LayerRouting] | None = None
    """With `return_routing`, one entry per layer, even in eval mode without autograd; layers
    without routed experts have empty [T, 0] tensors."""
    lm_loss: LMHeadLoss | None = None
    """With labels outside autocast: CE and logit z-loss (float32) from the fused LM head, in
    place of the logits; only its `total` carries gradients."""


def document_inputs(
    cfg: ModelConfig, input_ids_BS: torch.Tensor, doc_ids_BS: torch.Tensor | None
) -> tuple[Segments, torch.Tensor | None]:
    """Segments for the router pool and, with document masking on, the attention mask [B,1,S,S].

    Each follows its own OLMo-core convention for the EOS between two documents (see `docs`): the
    pool's segments start at the EOS, the attention's documents end with it.
    """
    B, S = input_ids_BS.shape
    if doc_ids_BS is None and cfg.eos_id is not None:
        doc_ids_BS = doc_ids_from_eos(input_ids_BS, cfg.eos_id)
    elif doc_ids_BS is None:
        doc_ids_BS = torch.zeros_like(input_ids_BS)
    pool_segments = Segments.for_pool(doc_ids_BS, input_ids_BS, cfg.eos_id)
    if not cfg.doc_attention_mask:
        return pool_segments, None
    causal_SS = torch.ones(S, S, dtype=torch.bool, device=input_ids_BS.device).tril()
    return pool_segments, (Segments.from_doc_ids(doc_ids_BS).same_doc_BSS(B) & causal_SS)[:, None]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.qk_norm, cfg.norm_eps)
        self.moe_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.moe = MoE(
            cfg.d_model, cfg.moe.expert_hidden_size, cfg.moe.experts_in_layer(layer), cfg.moe.top_k, cfg.moe.router
        )

    def forward(
        self, x_BSD, cos_SDh, sin_SDh, mask_B1SS, segments, pool_seed, kv: LayerKV | None = None, aux_losses: bool = True
    ):
        x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), cos_SDh, sin_SDh, mask_B1SS, kv)
        y_TD, routed = self.moe(self.moe_norm(x_BSD).flatten(0, 1), segments, pool_seed, aux_losses)
        return x_BSD + y_TD.view_as(x_BSD), routed


class EmoTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size)
        self.pool_sampler = PoolSampler()
        self.init_buffers()
        self.reset_parameters()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Compute the buffers that checkpoints do not store (rotary tables), on the weights' device.

        A model built on the meta device and loaded with `load_state_dict(assign=True)` has real
        weights but meta buffers; this makes it runnable.
        """
        device = self.embed.weight.device
        cos_SDh, sin_SDh = rope_tables(self.cfg.max_seq_len, self.cfg.head_dim, self.cfg.rope_theta)
        self.register_buffer("rope_cos", cos_SDh.to(device), persistent=False)
        self.register_buffer("rope_sin", sin_SDh.to(device), persistent=False)
        for router in self._routers():
            router.init_buffers()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Truncated normal (std `init_std`, clipped at 3 std) for every weight matrix; norms at 1."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                init_weight_(module.weight, self.cfg.init_std)
            elif isinstance(module, Experts):
                module.reset_parameters(self.cfg.init_std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self, input_ids_BS: torch.Tensor, doc_ids_BS: torch.Tensor | None = None, return_routing: bool = False,
        labels_BS: torch.Tensor | None = None, aux_losses: bool | None = None,
    ) -> ModelOutput:
        """Logits, or with `labels_BS` the LM loss terms straight from the hidden states (`lm_head_loss`:
        faster, and no [B, S, V] tensor); under autocast always the logits (see `ModelOutput`).

        `aux_losses`: compute the routers' LB and z-losses. None (the default) computes them where
        they can be used: in training mode, or with autograd on. An eval-mode forward under
        `torch.no_grad`/`inference_mode` (evaluation, generation) skips them, and their work.
        """
        B, S = input_ids_BS.shape
        if S > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {S} exceeds max_seq_len {self.cfg.max_seq_len}")
        segments, mask_B1SS = document_inputs(self.cfg, input_ids_BS, doc_ids_BS)
        x_BSD = self._embed(input_ids_BS)
        cos_SDh, sin_SDh = self.rope_cos[:S], self.rope_sin[:S]
        if aux_losses is None:
            aux_losses = self.training or torch.is_grad_enabled()
        lb_loss = router_z_loss = x_BSD.new_zeros(()) if aux_losses else None
        routing = []
        for layer, pool_seed in zip(self.layers, self._pool_seeds()):
            x_BSD, routed = layer(x_BSD, cos_SDh, sin_SDh, mask_B1SS, segments, pool_seed, aux_losses=aux_losses)
            if routed is None:
                empty_T0 = x_BSD.new_zeros(B * S, 0)
                routing.append(LayerRouting(empty_T0, empty_T0.long(), empty_T0))
                continue
            if aux_losses:
                lb_loss = lb_loss + routed.lb_loss
                router_z_loss = router_z_loss + routed.z_loss
            routing.append(LayerRouting(routed.logits_TE, routed.experts_TK, routed.weights_TK))
        routing = routing if return_routing else None
        autocast = torch.is_autocast_enabled(x_BSD.device.type)
        if labels_BS is not None and not autocast and not is_stored_narrower(x_BSD, self.lm_head.weight):
            lm_loss = lm_head_loss(self.norm(x_BSD), self.lm_head.weight, labels_BS, self.cfg.loss.logit_z_weight)
            return ModelOutput(None, lb_loss, router_z_loss, routing, lm_loss)
        return ModelOutput(self.lm_head(self.norm(x_BSD)), lb_loss, router_z_loss, routing)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `capacity` positions (padding included)."""
        if capacity > self.cfg.max_seq_len:
            raise ValueError(f"{capacity} cache positions exceed max_seq_len {self.cfg.max_seq_len}")
        return KVCache(
            self.cfg.num_layers, batch_size, capacity, self.cfg.kv_heads, self.cfg.head_dim,
            eos_id=self.cfg.eos_id, doc_mask=self.cfg.doc_attention_mask,
            dtype=self.rope_cos.dtype, device=self.embed.weight.device,
        )

    def decode(
        self, input_ids_BS: torch.Tensor, cache: KVCache, valid_BS: torch.Tensor | None = None, last: bool = False
    ) -> torch.Tensor:
        """Logits [B, S, V] of new tokens that attend to `cache` and are appended to it; with `last`,
        those of the last position only, [B, 1, V] (what generation needs of a prompt: the LM head,
        the largest matrix, then runs on one row instead of S).

        Rows are left-padded (`valid_BS` False on padding). Eval mode and pool-free routing only:
        an EMO pool needs whole documents, which incremental decoding never has.
        """
        if self.training or parse_pool(self.cfg.moe.router.eval_pool, "eval_pool") is not None:
            raise ValueError("decoding with a KV cache needs eval mode and moe.router.eval_pool=off")
        positions_BS, mask_B1SP = cache.extend(input_ids_BS, valid_BS)
        cos_B1SDh, sin_B1SDh = self.rope_cos[positions_BS][:, None], self.rope_sin[positions_BS][:, None]
        x_BSD = self._embed(input_ids_BS)
        for layer, kv in zip(self.layers, cache.layers):
            x_BSD, _ = layer(x_BSD, cos_B1SDh, sin_B1SDh, mask_B1SP, None, None, kv, aux_losses=False)
        if last:
            x_BSD = x_BSD[:, -1:]
        return self.lm_head(self.norm(x_BSD))

    def _embed(self, input_ids_BS: torch.Tensor) -> torch.Tensor:
        """The tokens' embedding rows in the activations' dtype (that of the rotary tables, which are
        computed, never stored): weights may be stored narrower, and widening only the rows looked
        up is exact."""
        return self.embed(input_ids_BS).to(self.rope_cos.dtype)

    def _pool_seeds(self) -> list[torch.Tensor | None]:
        """One seed tensor per layer for random pool sizes; a training forward with a range pool uses
        up one forward index of the sampler."""
        routers = self._routers()
        # Every router has the same pool; its `pool` is None while a schedule has it switched off.
        pool = routers[0].pool if routers else None
        if not (self.training and pool is not None and pool[0] != pool[1]):
            return [None] * len(self.layers)
        forward_index = self.pool_sampler.next_forward()
        seeds = [self.pool_sampler.layer_seed(forward_index, i) for i in range(len(self.layers))]
        return seed_tensors(seeds, self.embed.weight.device)

    def set_train_pool_active(self, active: bool) -> None:
        """Turn the EMO pool of training forwards on or off in every layer (pool schedules); eval
        forwards keep `eval_pool`."""
        for router in self._routers():
            router.train_pool_active = active

    def restrict_experts(self, kept: Sequence[Sequence[int]] | None) -> None:
        """Route every MoE layer only to its kept routed experts (one ascending id list per MoE layer,
        in order), exactly as the subset sliced to them does, with no copy of any weight; None
        routes to every expert again. Switching costs nothing: several selections of one loaded
        model can take turns (`emomoe.model.selection.Selections`)."""
        routers = self._routers()
        if kept is not None and len(kept) != len(routers):
            raise ValueError(f"restrict_experts: {len(kept)} lists of kept experts for {len(routers)} MoE layers")
        for i, router in enumerate(routers):
            router.restrict(None if kept is None else kept[i])

    def update_router_biases(self) -> None:
        """Apply the pending bias-balancing updates (call after each optimizer step; no-op when off)."""
        for router in self._routers():
            router.update_bias()

    def lb_history(self) -> list[torch.Tensor]:
        """The LB windows' counts of earlier training forwards, one tensor per router (empty when
        `lb_window` is 1): training state, which checkpoints keep with the trainer's, not the weights."""
        return [router.lb_history_WE1.clone() for router in self._windowed_routers()]

    @torch.no_grad()
    def load_lb_history(self, history: list[torch.Tensor]) -> None:
        routers = self._windowed_routers()
        saved, needed = [tuple(t.shape) for t in history], [tuple(r.lb_history_WE1.shape) for r in routers]
        if saved != needed:
            raise ConfigError(
                f"the saved LB history has shapes {saved}, this model's lb_window needs {needed}: "
                "moe.router.lb_window cannot change on resume"
            )
        for router, counts_WE1 in zip(routers, history):
            router.lb_history_WE1.copy_(counts_WE1)

    def _windowed_routers(self) -> list[Router]:
        """The routers whose LB loss looks back over earlier forwards (`lb_window` > 1)."""
        return [router for router in self._routers() if router.lb_window > 1]

    def _routers(self) -> list[Router]:
        """The routers of the layers that have routed experts, in order."""
        return [layer.moe.router for layer in self.layers if layer.moe.router is not None]


def build_model(cfg: ModelConfig) -> EmoTransformer:
    cfg.check()
    return EmoTransformer(cfg)
