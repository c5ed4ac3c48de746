import contextlib

import pytest
import torch

from emomoe import kernels
from emomoe.model.norm import RMSNorm


@pytest.mark.parametrize("fused", [True, False], ids=["fused_kernel", "pytorch_ops"])
@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 8), (70, 300)])
def test_values_and_gradients_equal_the_formula(shape, fused):
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[-1], generator=g) + 0.5)
    x = (3 * torch.randn(shape, generator=g)).requires_grad_()
    upstream = torch.randn(shape, generator=g)
    with contextlib.nullcontext() if fused else kernels.disabled():
        out = norm(x)
        grads = torch.autograd.grad((out * upstream).sum(), (x, norm.weight))
    # Reference in float64: x / sqrt(mean(x^2) + eps) * w, differentiated by autograd.
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    ref = x64 / (x64.square().mean(-1, keepdim=True) + 1e-5).sqrt() * w64
    ref_grads = torch.autograd.grad((ref * upstream.double()).sum(), (x64, w64))
    assert out.shape == shape and torch.allclose(out.double(), ref, atol=1e-6)
    with torch.no_grad():  # torch's forward, without an autograd node
        assert torch.allclose(norm(x), out, atol=1e-6)
    for got, expected in zip(grads, ref_grads):
        assert torch.allclose(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_it_is_torchs_module_with_torchs_path_for_other_dtypes():
    norm = RMSNorm(8, eps=1e-6)
    assert isinstance(norm, torch.nn.RMSNorm) and list(norm.state_dict()) == ["weight"]
    norm.to(torch.bfloat16)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16
    assert torch.equal(norm(x), torch.nn.functional.rms_norm(x, (8,), norm.weight, 1e-6))
