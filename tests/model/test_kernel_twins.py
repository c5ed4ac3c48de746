"""Every fused kernel against its PyTorch twin, both in float32 (the float64 formula tests of each
kernel live beside its model function in tests/model)."""

import re

import pytest
import torch

from emomoe import kernels
from emomoe.model.kernel_twins import TWINS

# Kernel and twin compute the same formula in float32 but round differently (vector exp, sums in
# other orders). Relative to each output's largest magnitude (rounding scales with it: an element
# that cancels to near zero keeps its terms' error) they differed by at most 6 eps (the pool's
# softmax gradient), with AVX-512 and with AVX2 vectors. 16 eps leaves room for other CPUs and
# BLAS builds; a wrong formula or index is off by orders of magnitude more. Integer and boolean
# outputs (experts, pools) must be equal. A kernel that rounds its inputs states its own bound.
TOLERANCE = 16 * torch.finfo(torch.float32).eps
NOT_KERNELS = {"vector_isa"}  # reports how the library was compiled


def _ops_run(run) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The outputs of `run`, and the emomoe ops it called."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        outputs = run()
    return outputs, {e.name.removeprefix("emomoe::") for e in prof.events() if e.name.startswith("emomoe::")}


def _max_relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    if not expected.is_floating_point():
        return 0.0 if torch.equal(got, expected) else float("inf")
    scale = expected.detach().abs().max().clamp(min=torch.finfo(expected.dtype).tiny)
    return float((got.detach() - expected.detach()).abs().max() / scale)


@pytest.mark.parametrize("twin", TWINS, ids=lambda twin: twin.function.rsplit(".", 1)[-1])
def test_every_kernel_equals_its_pytorch_twin_in_float32(twin, kernel_ops):
    fused, called = _ops_run(twin.run)
    assert called == set(twin.ops)
    with kernels.disabled():
        plain, called = _ops_run(twin.run)
    assert not called
    assert fused.keys() == plain.keys()
    differences = {name: _max_relative_difference(fused[name], plain[name]) for name in plain}
    limit = TOLERANCE if twin.tolerance is None else twin.tolerance
    assert all(difference <= limit for difference in differences.values()), differences


def test_every_kernel_has_a_twin():
    defined = set(re.findall(r'm\.def\("(\w+)\(', kernels.SOURCE.read_text()))
    paired = {op for twin in TWINS for op in twin.ops}
    assert defined - NOT_KERNELS == paired
