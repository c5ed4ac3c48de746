"""Linear maps over weights in their stored dtype, against float64 products of the same values.

Legend: N rows, D model dim (inputs), F ffn hidden (outputs), E experts.
"""

import contextlib

import pytest
import torch
from torch import nn

from emomoe import kernels
from emomoe.model import linear as linear_module
from emomoe.model.linear import DECODE_ROWS, Linear, grouped_linear, linear

# fp32 sums of D = 203 products of O(1) terms against float64: rounding of a few eps times
# sqrt(D) times the terms, far below the 1e-2 a wrong row or expert would be off by.
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _reference(x_ND: torch.Tensor, w_EFD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    expert_N = torch.repeat_interleave(torch.arange(len(counts_E)), counts_E)
    return torch.einsum("nd,nfd->nf", x_ND.double(), w_EFD.double()[expert_N]).float()


@pytest.mark.parametrize("fused", [True, False], ids=["kernels", "pytorch"])
@pytest.mark.parametrize("num_rows", [1, 7, 5 * DECODE_ROWS + 3], ids=["one", "decode", "prefill"])
def test_grouped_linear_multiplies_each_row_by_its_experts_weights_read_as_stored(fused, num_rows):
    g = torch.Generator().manual_seed(0)
    x_ND = torch.randn(num_rows, 203, generator=g)
    w_EFD = torch.randn(5, 70, 203, generator=g).bfloat16()
    counts_E = torch.tensor([num_rows - num_rows // 2, 0, num_rows // 2, 0, 0])
    # An expert without rows is never read: its weights may be anything, NaN included.
    w_EFD[[1, 3, 4]] = float("nan")
    with contextlib.nullcontext() if fused else kernels.disabled():
        y_NF = grouped_linear(x_ND, w_EFD, counts_E)
    torch.testing.assert_close(y_NF, _reference(x_ND, w_EFD, counts_E), **TOLERANCE)


def test_the_prefill_path_widens_a_tile_of_rows_at_a_time(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x_ND = torch.randn(40, 203, generator=g)
    w_FD = torch.randn(70, 203, generator=g).half()  # no kernel for fp16: always tiles
    monkeypatch.setattr(linear_module, "TILE_BYTES", 16 * 203 * 4)  # 16 rows: tiles of 16, 16, 16, 16, 6
    torch.testing.assert_close(linear(x_ND, w_FD), _reference(x_ND, w_FD[None], torch.tensor([40])), **TOLERANCE)


def test_linear_keeps_leading_dims_and_leaves_weights_as_wide_as_the_input_to_torch():
    g = torch.Generator().manual_seed(0)
    x_BSD = torch.randn(2, 3, 203, generator=g)
    w_FD = torch.randn(70, 203, generator=g)
    assert torch.equal(linear(x_BSD, w_FD), nn.functional.linear(x_BSD, w_FD))
    y_BSF = linear(x_BSD, w_FD.bfloat16())
    assert y_BSF.shape == (2, 3, 70) and y_BSF.dtype == torch.float32
    expected_NF = _reference(x_BSD.reshape(6, 203), w_FD.bfloat16()[None], torch.tensor([6]))
    torch.testing.assert_close(y_BSF.reshape(6, 70), expected_NF, **TOLERANCE)


def test_a_linear_module_has_the_state_dict_of_a_bias_free_nn_linear():
    ours, theirs = Linear(203, 70), nn.Linear(203, 70, bias=False)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
