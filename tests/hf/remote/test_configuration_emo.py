"""Our `EmoConfig` (the file every export ships) against the official class's defaults and limits."""

import pytest


@pytest.fixture(scope="module")
def EmoConfig():
    import transformers  # noqa: F401  (before our model files: see auto.py)

    from emomoe.hf.remote.configuration_emo import EmoConfig

    return EmoConfig


def test_a_field_config_json_leaves_out_takes_the_official_default(EmoConfig):
    # The official EmoConfig's defaults, written out by hand.
    official = {"num_experts": 7, "num_experts_per_tok": 5, "num_shared_experts": 0, "hidden_size": 4096,
                "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 100352,
                "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "router_aux_loss_coef": 0.01,
                "output_router_logits": False, "norm_topk_prob": False, "tie_word_embeddings": False}
    config = EmoConfig()
    assert {name: getattr(config, name) for name in official} == official
    # A config.json without num_shared_experts has no shared expert.
    assert EmoConfig.from_dict({"num_experts": 4, "num_experts_per_tok": 2, "num_hidden_layers": 2}).experts_in_layer(0) == (4, 0)


def test_a_layer_with_fewer_routed_experts_than_each_token_takes_is_refused(EmoConfig):
    fields = {"num_hidden_layers": 3, "num_experts": 6, "num_experts_per_tok": 3, "num_shared_experts": 1,
              "dense_intermediate_size": 16}
    EmoConfig(num_experts_per_layer=[6, 3, 0], **fields)  # 2 routed experts for 2 per token, and a dense layer
    with pytest.raises(ValueError, match=r"^EmoConfig: layer 1 has 1 routed experts, fewer than the 2 each token takes "
                                         r"\(num_experts_per_tok 3 - 1 shared\)$"):
        EmoConfig(num_experts_per_layer=[6, 2, 0], **fields)
