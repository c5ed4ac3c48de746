import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.model.experts import HAS_GROUPED_MM, Experts, expert_matmul, grouped_matmul, looped_matmul, swiglu
from emomoe.model.quantized import install_quantized, quantize


def _make_experts(num_routed, num_shared, dtype=torch.float64, hidden=4):
    torch.manual_seed(0)
    experts = Experts(num_routed + num_shared, num_shared, d_model=8, hidden=hidden).to(dtype)
    experts.reset_parameters(std=1.0)
    return experts


def _naive(experts, x_TD, experts_TK, weights_TK):
    """Token by token, expert by expert."""
    def ffn(e, x):
        return experts.w2[e] @ (F.silu(experts.w1[e] @ x) * (experts.w3[e] @ x))

    rows = []
    for t in range(x_TD.shape[0]):
        y = sum(ffn(e, x_TD[t]) for e in range(experts.num_routed, experts.w1.shape[0]))
        for e, w in zip(experts_TK[t].tolist(), weights_TK[t]):
            y = y + w * ffn(e, x_TD[t])
        rows.append(y)
    return torch.stack(rows)


# float32 runs the grouped kernel (where present), float64 the per-expert loop.
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2), st.integers(1, 9), st.sampled_from([torch.float32, torch.float64]),
       st.data())
def test_dropless_experts_equal_a_per_token_loop(num_routed, num_shared, num_tokens, dtype, data):
    top_k = data.draw(st.integers(1, num_routed))
    experts = _make_experts(num_routed, num_shared, dtype)
    x_TD = torch.randn(num_tokens, 8, dtype=dtype)
    experts_TK = torch.stack([torch.randperm(num_routed)[:top_k] for _ in range(num_tokens)])
    weights_TK = torch.rand(num_tokens, top_k, dtype=dtype)
    expected = _naive(experts, x_TD, experts_TK, weights_TK)
    assert torch.allclose(experts(x_TD, experts_TK, weights_TK), expected, atol=1e-5, rtol=1e-4)


def test_shared_experts_alone_apply_to_every_token_with_weight_one():
    experts = _make_experts(0, 2)
    x_TD = torch.randn(4, 8, dtype=torch.float64)
    empty = torch.zeros(4, 0, dtype=torch.long)
    assert torch.allclose(experts(x_TD), _naive(experts, x_TD, empty, empty.double()))


# Weights kept narrow take the path where the shared experts join the routed ones' grouped calls:
# a decoded token (kernel) and a prompt (widened tiles) both equal the loop on the stored values.
@pytest.mark.parametrize("num_tokens", [1, 3, 40])
@pytest.mark.parametrize("stored", ["bf16", "int8"])
@pytest.mark.parametrize("num_shared", [1, 2])
def test_weights_kept_narrow_equal_the_loop_on_their_stored_values(num_shared, stored, num_tokens):
    torch.manual_seed(0)
    experts = Experts(4 + num_shared, num_shared, d_model=64, hidden=32)
    experts.reset_parameters(std=1.0)
    reference = Experts(4 + num_shared, num_shared, d_model=64, hidden=32).double()
    for name in ("w1", "w2", "w3"):
        if stored == "bf16":
            getattr(experts, name).data = getattr(experts, name).data.bfloat16()
            stored_values = getattr(experts, name).data.double()
        else:
            quantized = quantize(getattr(experts, name).data, 8, 32)
            install_quantized(experts, name, quantized)
            stored_values = quantized.dequantize(torch.float64)
        getattr(reference, name).data = stored_values
    x_TD = torch.randn(num_tokens, 64)
    experts_TK = torch.stack([torch.randperm(4)[:2] for _ in range(num_tokens)])
    weights_TK = torch.rand(num_tokens, 2)
    expected = _naive(reference, x_TD.double(), experts_TK, weights_TK.double())
    with torch.no_grad():
        got = experts(x_TD, experts_TK, weights_TK)
    # fp32 sums; int8 also rounds a decoded token's activations to int16 (a step of 2^-15 of a
    # group's largest), which SwiGLU's product carries into the down projection.
    tolerance = (2**-12 if stored == "int8" and num_tokens <= 3 else 2**-18) * expected.abs().max()
    assert (got.double() - expected).abs().max() <= tolerance


@pytest.mark.skipif(not HAS_GROUPED_MM, reason="torch._grouped_mm is not available")
def test_grouped_matmul_equals_the_per_expert_loop_in_values_and_gradients():
    torch.manual_seed(0)
    counts_E = torch.tensor([3, 0, 5, 1, 0])
    x_ND = torch.randn(9, 8, requires_grad=True)
    w_EFD = torch.randn(5, 4, 8, requires_grad=True)
    grad_NF = torch.randn(9, 4)
    results = []
    for fn in (grouped_matmul, looped_matmul):
        y = fn(x_ND, w_EFD, counts_E)
        results.append((y, *torch.autograd.grad(y, (x_ND, w_EFD), grad_NF)))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)
    assert not results[0][2][1].any() and not results[0][2][4].any()


def test_expert_matmul_falls_back_to_the_loop_for_unsupported_dtypes_and_shapes():
    counts_E = torch.tensor([2, 1])
    for x_ND, w_EFD in [(torch.randn(3, 8, dtype=torch.float64), torch.randn(2, 4, 8, dtype=torch.float64)),
                        (torch.randn(3, 5), torch.randn(2, 3, 5))]:
        assert torch.allclose(expert_matmul(x_ND, w_EFD, counts_E), looped_matmul(x_ND, w_EFD, counts_E))


# float32 runs the fused SwiGLU kernel (emomoe.kernels), float64 PyTorch's ops.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hidden", [4, 12])  # the routing weight scales the narrower side: hidden, then d_model
@pytest.mark.parametrize("num_shared", [0, 2])
def test_gradients_equal_those_of_a_per_token_loop(num_shared, hidden, dtype):
    experts = _make_experts(5, num_shared, hidden=hidden).to(dtype)
    g = torch.Generator().manual_seed(1)
    x_TD = torch.randn(7, 8, dtype=torch.float64, generator=g).to(dtype).requires_grad_()
    experts_TK = torch.stack([torch.randperm(5, generator=g)[:3] for _ in range(7)])
    weights_TK = torch.rand(7, 3, dtype=torch.float64, generator=g).to(dtype).requires_grad_()
    grad_TD = torch.randn(7, 8, dtype=torch.float64, generator=g)
    inputs = (x_TD, weights_TK, experts.w1, experts.w2, experts.w3)
    fast = torch.autograd.grad(experts(x_TD, experts_TK, weights_TK), inputs, grad_TD.to(dtype))
    # The reference in float64, from the same values.
    reference = _make_experts(5, num_shared, hidden=hidden)
    reference.load_state_dict(experts.state_dict())
    ref_inputs = [t.detach().double().requires_grad_() for t in (x_TD, weights_TK)]
    ref_inputs += [reference.w1, reference.w2, reference.w3]
    slow = torch.autograd.grad(_naive(reference, ref_inputs[0], experts_TK, ref_inputs[1]), ref_inputs, grad_TD)
    for a, b in zip(fast, slow):
        assert torch.allclose(a.double(), b, atol=1e-12 if dtype == torch.float64 else 1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_swiglu_and_its_gradients_equal_the_formula_also_far_out(dtype):
    g_NF = torch.tensor([[-100.0, -20.0, -1.0, 0.0, 0.5, 3.0, 20.0, 100.0]] * 3, dtype=dtype)
    g_NF = (g_NF * torch.linspace(0.5, 1.5, 3, dtype=dtype)[:, None]).requires_grad_()
    u_NF = torch.randn(g_NF.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(dtype)
    u_NF.requires_grad_()
    upstream = torch.randn(g_NF.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = swiglu(g_NF, u_NF)
    grads = torch.autograd.grad((out * upstream.to(dtype)).sum(), (g_NF, u_NF))
    g64, u64 = (t.detach().double().requires_grad_() for t in (g_NF, u_NF))
    ref = g64 * torch.sigmoid(g64) * u64  # x * sigmoid(x): not the silu op under test
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (g64, u64))
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-6)
    for got, expected in zip(grads, ref_grads):
        assert torch.isfinite(got).all() and torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-6)
