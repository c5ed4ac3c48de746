import os
import subprocess
import sys

import pytest
import torch

from emomoe import kernels

# The pool kernel is tested against per-document loops in tests/model/test_pool.py.


def test_the_kernels_build_and_load_on_this_machine(kernel_ops):
    assert kernels.library_path().is_file()
    assert kernel_ops.vector_isa() in ("AVX512", "AVX2", "DEFAULT")


@pytest.mark.parametrize("shape", [(1, 1), (5, 127), (300, 64), (7, 16), (3, 17)])
def test_topk_indices_equal_torch_topk(shape, kernel_ops):
    g = torch.Generator().manual_seed(shape[1])
    x_TE = torch.randn(shape, generator=g)
    for k in {0, 1, min(7, shape[1]), shape[1]}:
        assert torch.equal(kernel_ops.topk_indices(x_TE, k), x_TE.topk(k, dim=-1).indices)


def test_topk_ties_go_to_the_lower_index(kernel_ops):
    x_TE = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert kernel_ops.topk_indices(x_TE, 3).tolist() == [[1, 3, 4], [0, 1, 2]]


def test_topk_reads_strided_input_and_refuses_other_dtypes(kernel_ops):
    x_ET = torch.randn(9, 40)
    assert torch.equal(kernel_ops.topk_indices(x_ET.T, 4), x_ET.T.topk(4).indices)
    with pytest.raises(RuntimeError, match="float32"):
        kernel_ops.topk_indices(x_ET.double(), 4)


def test_usable_only_for_float32_cpu_tensors(kernel_ops):
    assert kernels.usable(torch.ones(2), torch.ones(3))
    assert not kernels.usable(torch.ones(2), torch.ones(2, dtype=torch.float64))
    assert not kernels.usable(torch.ones(2, device="meta"))


def test_disabled_turns_the_kernels_off_within_its_block_only(kernel_ops):
    x = torch.ones(2)
    with pytest.raises(ValueError):
        with kernels.disabled():
            with kernels.disabled():
                assert not kernels.usable(x)
            assert not kernels.usable(x)
            raise ValueError
    assert kernels.usable(x)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


FORWARD = """
import torch
from emomoe import kernels
from emomoe.model import ModelConfig, build_model
torch.manual_seed(0)
model = build_model(ModelConfig.preset("tiny"))
ids = torch.randint(0, model.cfg.vocab_size, (2, 16))
out = model(ids, labels_BS=ids)
out.lm_loss.total.backward()
print(kernels.ops() is None, float(out.lm_loss.ce))
"""


OPENMP_RUNTIMES = """
import torch
from emomoe import kernels

def runtimes():
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "gomp" in line or "omp5" in line or "libomp" in line})

torch.randn(512, 512) @ torch.randn(512, 512)  # torch's runtime is up
before = runtimes()
kernels.ops().topk_indices(torch.randn(4096, 8), 2)  # a parallel region in our library
print(before == runtimes(), before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_the_kernels_share_torchs_openmp_runtime(kernel_ops):
    """A second OpenMP runtime would start its own thread per core, and the two pools' spinning
    threads would fight over the cores. (In a fresh process: other libraries, e.g. scikit-learn,
    bring their own.)"""
    done = _run(OPENMP_RUNTIMES)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True"), done.stdout


def test_switched_off_or_unbuildable_kernels_leave_the_pytorch_path(tmp_path, kernel_ops):
    """EMOMOE_KERNELS=0, and a machine whose compiler fails (an empty cache, so a build is tried):
    the model runs on PyTorch ops alone, with one warning line for the failed build."""
    off = _run(FORWARD, EMOMOE_KERNELS="0")
    assert off.returncode == 0, off.stderr
    no_compiler = _run(FORWARD, EMOMOE_CACHE=str(tmp_path), CXX="/nonexistent/c++")
    assert no_compiler.returncode == 0, no_compiler.stderr
    assert off.stdout.split()[0] == no_compiler.stdout.split()[0] == "True"
    assert "fused CPU kernels unavailable" in no_compiler.stderr
    assert not list(tmp_path.rglob("*.so"))
    on = _run(FORWARD)
    assert on.returncode == 0 and on.stdout.split()[0] == "False", on.stderr
    # The same model and batch through the kernels: the same loss to float32 rounding.
    assert float(on.stdout.split()[1]) == pytest.approx(float(off.stdout.split()[1]), abs=1e-5)
