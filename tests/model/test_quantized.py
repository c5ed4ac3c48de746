"""Integer weights: the quantizer and its layout against a slow per-group reference written from
the module docstring's rules, and the views the experts' code takes of them.

Legend: E experts, F ffn hidden (outputs), D model dim (inputs), N rows.
"""

import pytest
import torch

from emomoe import kernels
from emomoe.model.linear import DECODE_ROWS, grouped_linear, linear
from emomoe.model.quantized import QuantizedTensor, QuantizedWeight, quantize, quantized_bits


def _slow_quantize(w_FD: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers [F, D] as plain ints, scales [F, D / group]), one group at a time in float64."""
    ints, scales = torch.zeros(w_FD.shape, dtype=torch.int64), torch.zeros(w_FD.shape[0], w_FD.shape[1] // group)
    for f in range(w_FD.shape[0]):
        for g in range(w_FD.shape[1] // group):
            values = w_FD[f, g * group : (g + 1) * group].double()
            if bits == 8:
                scale = values.abs().max() / 127
                low, high = -127, 127
            else:
                extreme = values[values.abs().argmax()]
                scale = extreme / -8
                low, high = -8, 7
            scales[f, g] = scale
            if scale != 0:
                ints[f, g * group : (g + 1) * group] = (values / float(scale.float())).round().clamp(low, high).long()
    return ints, scales


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("group", [32, 64])
def test_quantize_matches_the_per_group_rules_and_dequantizes_within_half_a_step(bits, group):
    g = torch.Generator().manual_seed(0)
    w_FD = torch.randn(6, 128, generator=g) * torch.rand(6, 1, generator=g)
    w_FD[2, :group] = 0  # an all-zero group: zeros, not NaN
    q = quantize(w_FD, bits, group)
    ints, scales = _slow_quantize(w_FD, bits, group)
    torch.testing.assert_close(q.scales, scales.float(), rtol=1e-6, atol=0)
    assert torch.equal(q.integers().long(), ints)
    deq_FD = q.dequantize()
    assert torch.isfinite(deq_FD).all() and torch.equal(deq_FD[2, :group], torch.zeros(group))
    step_FD = scales.float().abs().repeat_interleave(group, dim=1)
    # Rounding is off by half a step; at 4 bits a value as large as the extreme but of the other
    # sign would be +8, clamped to 7: a whole step.
    bound_FD = step_FD / 2 if bits == 8 else step_FD
    assert ((deq_FD - w_FD).abs() <= bound_FD + 1e-7).all()


def test_four_bit_integers_pack_as_nibbles_in_blocks_of_32():
    # One row of 64 inputs: two blocks. Byte j of a block holds weight j low, weight j + 16 high.
    w = torch.arange(64, dtype=torch.float32).remainder(16).sub(8)[None]  # every level, in order
    w[0, 0] = -8.0  # the group's extreme is -8: scale 1
    q = quantize(w, 4, 64)
    assert q.qdata.dtype == torch.uint8 and q.qdata.shape == (1, 32)
    ints = w[0].long() + 8
    for block in range(2):
        for j in range(16):
            byte = int(q.qdata[0, block * 16 + j])
            assert byte & 15 == ints[block * 32 + j] and byte >> 4 == ints[block * 32 + 16 + j]


def test_views_of_quantized_experts_equal_the_same_views_of_the_float_tensor():
    g = torch.Generator().manual_seed(0)
    w_EDF = torch.randn(5, 64, 96, generator=g)  # down projections: inputs F = 96
    q = quantize(w_EDF, 4, 32)
    deq = q.dequantize()
    assert torch.equal(q[:3].dequantize(), deq[:3])
    assert torch.equal(q[3:].transpose(0, 1).reshape(64, -1).dequantize(), deq[3:].transpose(0, 1).reshape(64, -1))
    assert torch.equal(q[3:].reshape(-1, 96).dequantize(), deq[3:].reshape(-1, 96))
    assert q.shape == (5, 64, 96) and q.group_size == 32
    with pytest.raises(IndexError):
        q[..., :32]
    with pytest.raises(ValueError):
        q.transpose(1, 2)


def _activation_rounding_bound(x_ND: torch.Tensor, w_NFD: torch.Tensor, group: int) -> torch.Tensor:
    """[N, F]: the most that rounding each group of x to int16 (its largest magnitude at 32767)
    can move x . w: half a step per input, times |w|, summed."""
    n, f, d = w_NFD.shape
    half_step_NG = x_ND.double().view(n, d // group, group).abs().amax(-1) / 32767 / 2
    return torch.einsum("ng,nfg->nf", half_step_NG, w_NFD.double().abs().view(n, f, d // group, group).sum(-1))


@pytest.mark.parametrize("fused", [True, False], ids=["kernels", "pytorch"])
@pytest.mark.parametrize("num_rows", [1, 7, 200], ids=["one", "decode", "prefill"])
@pytest.mark.parametrize("bits", [8, 4])
def test_linear_maps_over_integers_equal_float64_products_of_the_dequantized_weights(fused, num_rows, bits):
    g = torch.Generator().manual_seed(0)
    x_ND = torch.randn(num_rows, 256, generator=g)
    x_ND[:, 5] *= 30  # an outlier channel: its group's step is 30 times coarser
    q = quantize(torch.randn(4, 70, 256, generator=g), bits, 64)
    counts_E = torch.tensor([num_rows - num_rows // 2, 0, num_rows // 2, 0])
    expert_N = torch.repeat_interleave(torch.arange(4), counts_E)
    with kernels.disabled() if not fused else torch.no_grad():
        y_NF = grouped_linear(x_ND, q, counts_E)
        y1_NF = linear(x_ND, QuantizedWeight(q[2]))
    # The 8-bit decoding kernel rounds activations to int16 (the kernels' comment says why); every
    # other path multiplies float32 activations. Beyond that rounding: float32 sums of 256 products.
    rounded = fused and bits == 8 and kernels.ops() is not None
    _assert_near(y_NF, x_ND, q.dequantize()[expert_N], rounded and num_rows <= DECODE_ROWS * 4)
    _assert_near(y1_NF, x_ND, q[2].dequantize().expand(num_rows, -1, -1), rounded and num_rows <= DECODE_ROWS)


def _assert_near(y_NF: torch.Tensor, x_ND: torch.Tensor, w_NFD: torch.Tensor, rounded: bool) -> None:
    expected_NF = torch.einsum("nd,nfd->nf", x_ND.double(), w_NFD.double())
    error_NF = (y_NF.double() - expected_NF).abs()
    bound_NF = _activation_rounding_bound(x_ND, w_NFD, 64) if rounded else torch.zeros_like(expected_NF)
    assert (error_NF <= bound_NF + 1e-4 + 1e-5 * expected_NF.abs()).all()
    if rounded:  # the rounding shows: an exact float path would not need the bound
        assert error_NF.max() > 1e-4


def test_int_kernel_refuses_a_group_size_that_is_not_whole_vectors(kernel_ops):
    q = quantize(torch.randn(1, 8, 64), 8, 32)
    scales = torch.ones(1, 8, 64 // 8)  # groups of 8 inputs
    with pytest.raises(RuntimeError, match="group size"):
        kernel_ops.int_grouped_linear(torch.randn(1, 64), q.qdata, scales, torch.tensor([1]), 8)


def test_which_weights_become_integers():
    assert quantized_bits("layers.3.moe.experts.w2", 4) == 4
    assert quantized_bits("layers.0.attn.o_proj.weight", 8) == 8
    assert quantized_bits("lm_head.weight", 4) == 8  # the head keeps 8 bits
    for name in ("embed.weight", "layers.0.moe.router.gate.weight", "layers.0.attn_norm.weight", "norm.weight"):
        assert quantized_bits(name, 8) is None


def test_quantized_weight_keeps_its_integers_and_scales_as_buffers():
    module = QuantizedWeight(quantize(torch.randn(70, 64), 8, 32))
    assert set(module.state_dict()) == {"qdata", "scales"} and not list(module.parameters())
    assert isinstance(module[:2], QuantizedTensor) and module.shape == (70, 64)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_non_finite_activation_gives_non_finite_outputs_in_its_row_only(bits):
    g = torch.Generator().manual_seed(0)
    x_ND = torch.randn(3, 256, generator=g)
    x_ND[1, 7] = float("inf")
    y_NF = linear(x_ND, QuantizedWeight(quantize(torch.randn(40, 256, generator=g), bits, 64)))
    assert not y_NF[1].isfinite().any()
    assert y_NF[[0, 2]].isfinite().all()


def test_long_groups_of_extreme_integers_do_not_overflow_the_integer_sums():
    # 2048 inputs in one group, every weight at +127 and every activation at its group's maximum:
    # one int32 sum of all 2048 products (127 * 32767 each) would overflow.
    w_FD = torch.ones(4, 2048)
    x_ND = torch.ones(1, 2048)
    y_NF = linear(x_ND, QuantizedWeight(quantize(w_FD, 8, 2048)))
    torch.testing.assert_close(y_NF, torch.full((1, 4), 2048.0), rtol=1e-5, atol=0)
