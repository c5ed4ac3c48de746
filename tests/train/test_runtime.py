import os
import subprocess
import sys

import pytest

from emomoe.train.runtime import RETAIN_MEMORY_ENV

# Allocate, free and allocate again a 64 MB tensor; print the page faults of the second allocation.
_REFAULTS = """
import resource, torch
from emomoe.train.runtime import retain_freed_memory
print(retain_freed_memory())
def touch():
    torch.empty(16 * 2**20).fill_(1.0)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _refaults(retain: str) -> tuple[bool, int]:
    env = {**os.environ, RETAIN_MEMORY_ENV: retain, "THP_MEM_ALLOC_ENABLE": "0"}
    out = subprocess.run([sys.executable, "-c", _REFAULTS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator setting")
def test_retained_memory_is_reused_without_page_faults():
    applied, faults = _refaults("1")
    assert applied and faults < 100  # 64 MB is 16k pages of 4 kB when faulted in again
    opted_out, faults_default = _refaults("0")
    assert not opted_out and faults_default > 10_000
