"""Suite-wide settings: one torch thread per test, denormals flushed.

`make test` runs two pytest workers on two cores; more threads than cores makes torch's CPU
kernels orders of magnitude slower (measured: a 0.1 s test took 100 s). The trainer sets its own
thread count, so the setting is restored before every test rather than once.
"""

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    yield
