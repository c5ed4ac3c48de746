"""Suite-wide settings, restored before every test because the trainer changes them.

- One torch thread: `make test` runs two pytest workers on two cores, and more threads than
  cores makes torch's CPU kernels orders of magnitude slower (measured: a 0.1 s test took 100 s).
- Denormals not flushed: the trainer flushes them for speed, but that process-wide flag makes
  hypothesis refuse to generate floats in any later test of the same worker.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def torch_process_settings():
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    yield
