import pytest
import torch

from emomoe import ModelConfig, build_model
from emomoe.errors import DataError
from emomoe.hf.names import from_hf, to_hf


def _state(*overrides):
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("tiny").with_overrides(list(overrides))).state_dict()


@pytest.mark.parametrize(
    "overrides",
    [[], ["qk_norm=true", "moe.router.bias_update_rate=0.01"], ["moe.num_experts_per_layer=[3, 8]"],
     ["moe.num_experts=1", "moe.top_k=0", "moe.router.pool=off"]],
)
def test_state_dicts_round_trip_through_hf_names(overrides):
    state = _state(*overrides)
    back = from_hf(to_hf(state))
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_hf_names_follow_the_emo_layout():
    state = _state("qk_norm=true")
    hf = to_hf(state)
    expected_layer0 = {
        "input_layernorm.weight", "post_attention_layernorm.weight", "mlp.gate.weight",
        *(f"self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")),
        *(f"mlp.experts.{j}.{p}.weight" for j in range(8) for p in ("gate_proj", "up_proj", "down_proj")),
    }
    assert {k.removeprefix("model.layers.0.") for k in hf if k.startswith("model.layers.0.")} == expected_layer0
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= set(hf)
    # Stacked slices map to per-expert [out, in] matrices: gate/up are [H, D], down is [D, H].
    assert torch.equal(hf["model.layers.1.mlp.experts.5.gate_proj.weight"], state["layers.1.moe.experts.w1"][5])
    assert torch.equal(hf["model.layers.1.mlp.experts.5.up_proj.weight"], state["layers.1.moe.experts.w3"][5])
    assert torch.equal(hf["model.layers.1.mlp.experts.5.down_proj.weight"], state["layers.1.moe.experts.w2"][5])
    assert hf["model.layers.0.mlp.gate.weight"].shape == (8, 32)


def test_a_layer_without_routed_experts_uses_the_dense_mlp_names():
    hf = to_hf(_state("moe.num_experts=1", "moe.top_k=0", "moe.router.pool=off"))
    assert "model.layers.0.mlp.gate_proj.weight" in hf
    assert not any(".experts." in k or "mlp.gate.weight" in k for k in hf)


def test_unknown_names_are_reported():
    with pytest.raises(DataError, match="'model.layers.0.mlp.shared_expert.weight'"):
        from_hf({"model.layers.0.mlp.shared_expert.weight": torch.zeros(1)})
    with pytest.raises(DataError, match="'mystery'"):
        to_hf({"mystery": torch.zeros(1)})
    gap = {f"model.layers.0.mlp.experts.{j}.gate_proj.weight": torch.zeros(2, 2) for j in (0, 2)}
    with pytest.raises(DataError, match="expert indices"):
        from_hf(gap)
