"""`EmoConfig`: the `config.json` of a Hugging Face EMO checkpoint (model_type "emo").

Written for emomoe exports; it reads the released EMO checkpoints' fields with the same meaning:
- `num_experts` and `num_experts_per_tok` count the shared experts too; the shared experts are the
  last `num_shared_experts` of every layer and always run with weight 1.0;
- `num_experts_per_layer` (optional) gives each layer its own expert count (sliced subsets);
  0 marks a dense layer, a SwiGLU of width `dense_intermediate_size`;
- `norm_topk_prob` rescales the chosen routed weights to sum to 1;
- every layer routes each token to `num_experts_per_tok` minus its shared experts, so a layer with
  routed experts needs at least that many (the official class fails on fewer; this one refuses).

A field that config.json leaves out takes the official class's default (7 experts, 5 per token,
no shared expert, hidden size 4096, ...).

Beyond the official class: `qk_norm` (off unless written) is an RMSNorm over the whole query and
key projections, as in OLMoE, for models that have it; and `norm_topk_prob` also works beside a
shared expert, where the official class refuses it.

This file and `modeling_emo.py` only need torch and transformers.
"""

from transformers import PretrainedConfig


class EmoConfig(PretrainedConfig):
    model_type = "emo"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size=100352,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=4096,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=100277,
        bos_token_id=None,
        eos_token_id=100257,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling=None,
        attention_bias=False,
        attention_dropout=0.0,
        num_experts=7,
        num_experts_per_tok=5,
        num_shared_experts=0,
        num_experts_per_layer=None,
        num_shared_experts_per_layer=None,
        dense_intermediate_size=None,
        dense_mlp_bias=False,
        norm_topk_prob=False,
        output_router_logits=False,
        router_aux_loss_coef=0.01,
        qk_norm=False,
        **kwargs,
    ):
        # transformers >= 5 may hand the RoPE base over as `rope_parameters` instead.
        rope_parameters = kwargs.pop("rope_parameters", None) or {}
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = float(rope_parameters.get("rope_theta", rope_theta))
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_layer = num_experts_per_layer
        self.num_shared_experts_per_layer = num_shared_experts_per_layer
        self.dense_intermediate_size = dense_intermediate_size
        self.dense_mlp_bias = dense_mlp_bias
        self.norm_topk_prob = norm_topk_prob
        self.output_router_logits = output_router_logits
        self.router_aux_loss_coef = router_aux_loss_coef
        self.qk_norm = qk_norm
        if rope_scaling or rope_parameters.get("rope_type", "default") != "default":
            scaling = rope_scaling or rope_parameters
            raise ValueError(f"EmoConfig: RoPE scaling {scaling!r} is not supported (only plain RoPE)")
        self._check()

    def experts_in_layer(self, layer):
        """(experts, shared experts) of a layer; (0, 0) is a dense layer."""
        total = self.num_experts_per_layer[layer] if self.num_experts_per_layer is not None else self.num_experts
        if self.num_shared_experts_per_layer is not None:
            return total, self.num_shared_experts_per_layer[layer]
        return total, min(self.num_shared_experts, total)

    def _check(self):
        # Official fields this model does not implement: refuse rather than compute something else.
        for name in ("always_active_experts", "always_active_experts_per_layer", "ghost_extend_eval"):
            if getattr(self, name, None) not in (None, False, [], "false"):
                raise ValueError(f"EmoConfig: {name} {getattr(self, name)!r} is not supported by this model file")
        if self.hidden_act != "silu":
            raise ValueError(f"EmoConfig: hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if self.attention_bias:
            raise ValueError("EmoConfig: attention_bias is not supported")
        for layer in range(self.num_hidden_layers):
            total, shared = self.experts_in_layer(layer)
            if shared > 1:
                raise ValueError(f"EmoConfig: layer {layer} has {shared} shared experts; at most 1 is supported")
            if total == 0 and self.dense_intermediate_size is None:
                raise ValueError(f"EmoConfig: layer {layer} is dense but dense_intermediate_size is not set")
            per_token = self.num_experts_per_tok - shared
            if total > 0 and total - shared < per_token:
                raise ValueError(
                    f"EmoConfig: layer {layer} has {total - shared} routed experts, fewer than the {per_token} each "
                    f"token takes (num_experts_per_tok {self.num_experts_per_tok} - {shared} shared)"
                )
