"""Suite-wide settings, restored before every test because the trainer changes them, and the
`kernel_ops` fixture for tests of the fused CPU kernels themselves.

- One torch thread: `make test` runs two pytest workers on two cores, and more threads than
  cores makes torch's CPU kernels orders of magnitude slower (measured: a 0.1 s test took 100 s).
- Denormals not flushed: the trainer flushes them for speed, but that process-wide flag makes
  hypothesis refuse to generate floats in any later test of the same worker.
"""

import os
import shutil

import pytest
import torch

from emomoe import kernels

REQUIRE_KERNELS_ENV = "EMOMOE_REQUIRE_KERNELS"


@pytest.fixture(autouse=True)
def torch_process_settings():
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    yield


@pytest.fixture
def kernel_ops():
    """`torch.ops.emomoe`, for a test that asserts on the kernels themselves. Without them the
    model runs its PyTorch twins, so such a test is skipped where they cannot be: no C++ compiler,
    or EMOMOE_KERNELS=0. EMOMOE_REQUIRE_KERNELS=1 (set by CI) makes that a failure, as is a
    failed build where a compiler is present."""
    ops = kernels.ops()
    if ops is not None:
        return ops
    marker = kernels.failure_marker(kernels.library_path())
    reason = marker.read_text().strip() if marker.is_file() else "see the warning above"
    if os.environ.get(REQUIRE_KERNELS_ENV) == "1":
        pytest.fail(f"{REQUIRE_KERNELS_ENV}=1 but the fused CPU kernels are unavailable: {reason}")
    if not kernels.enabled():
        pytest.skip(f"{kernels.KERNELS_ENV}=0: the fused CPU kernels are off")
    if shutil.which(os.environ.get("CXX", "c++")) is not None:  # the compiler torch's builder runs
        pytest.fail(f"the fused CPU kernels did not build, though a C++ compiler is present: {reason}")
    pytest.skip(f"no C++ compiler, so no fused CPU kernels ({REQUIRE_KERNELS_ENV}=1 makes this a failure)")
