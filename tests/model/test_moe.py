import torch

from emomoe.model.config import RouterConfig
from emomoe.model.moe import MoE


def test_shared_experts_always_apply_on_top_of_the_routed_ones():
    torch.manual_seed(0)
    moe = MoE(d_model=8, hidden=6, num_experts=5, top_k=2, router_cfg=RouterConfig(num_shared_experts=1))
    x_TD = torch.randn(7, 8)
    y_TD, routed = moe(x_TD)
    routed_only = moe.experts._routed(x_TD, routed.experts_TK, routed.weights_TK, moe.experts.num_routed)
    with torch.no_grad():
        moe.experts.w2[4].zero_()
    y_without_shared, _ = moe(x_TD)
    assert torch.allclose(y_without_shared, routed_only, atol=1e-6)
    assert not torch.allclose(y_TD, y_without_shared)


def test_a_layer_without_routed_experts_is_a_dense_swiglu():
    torch.manual_seed(0)
    moe = MoE(d_model=8, hidden=6, num_experts=1, top_k=0, router_cfg=RouterConfig(num_shared_experts=1))
    assert moe.router is None
    x_TD = torch.randn(3, 8)
    y_TD, routed = moe(x_TD)
    w1, w2, w3 = moe.experts.w1[0], moe.experts.w2[0], moe.experts.w3[0]
    expected = (torch.nn.functional.silu(x_TD @ w1.T) * (x_TD @ w3.T)) @ w2.T
    assert routed is None and torch.allclose(y_TD, expected, atol=1e-6)
