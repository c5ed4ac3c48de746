"""Suite-wide settings, restored before every test because the trainer changes them, and the
`kernel_ops` fixture for tests of the fused CPU kernels themselves.

- One torch thread: `make test` runs two pytest workers on two cores, and more threads than
  cores makes torch's CPU kernels orders of magnitude slower (measured: a 0.1 s test took 100 s).
- Denormals not flushed: the trainer flushes them for speed, but that process-wide flag makes
  hypothesis refuse to generate floats in any later test of the same worker.

Also the fixtures that tests of several packages share (a synthetic sweep result; a three-domain
token store and a tiny checkpoint that fits it).
"""

import os
import random
import shutil

import pytest
import torch

from emomoe import kernels
from emomoe.checkpoint import save_model
from emomoe.data.store import TokenStore
from emomoe.model import build_model
from tests.fixtures import three_domain_store, tiny_config

REQUIRE_KERNELS_ENV = "EMOMOE_REQUIRE_KERNELS"


@pytest.fixture(autouse=True)
def torch_process_settings():
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    yield


@pytest.fixture
def sweep_results():
    """A synthetic sweep result: one selection method, two models, three domains, four keep fractions."""
    rng = random.Random(0)
    domains = ["code", "legal", "math"]
    keeps = ["1", "0.5", "0.25", "0.125"]
    loss = {
        model: {keep: {d: round(1.0 + rng.random() + (1 - float(keep)) * scale, 4) for d in domains} for keep in keeps}
        for model, scale in (("emo", 0.2), ("std", 1.5))
    }
    params = {
        model: {keep: {"total": int(1000 + 9000 * float(keep)), "active": 700} for keep in keeps} for model in loss
    }
    return {"loss": {"layerwise": loss}, "params": params, "settings": {"methods": ["layerwise"], "num_calib_windows": 4}}


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory):
    """A token store of three synthetic domains, tokenized with a 300-token byte-level BPE."""
    return three_domain_store(tmp_path_factory.mktemp("store") / "store")


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, store_dir):
    """An untrained tiny EMO checkpoint (peaked routing) whose vocabulary fits the store."""
    torch.manual_seed(1)
    cfg = tiny_config().with_overrides([f"vocab_size={TokenStore.open(store_dir).vocab_size}", "max_seq_len=64"])
    model = build_model(cfg)
    with torch.no_grad():
        for block in model.layers:
            block.moe.router.gate.weight.mul_(40.0)
    path = tmp_path_factory.mktemp("ckpt") / "full"
    save_model(path, model, cfg)
    return path


@pytest.fixture(scope="session")
def domain_subsets(tmp_path_factory, store_dir, checkpoint_dir):
    """Domain -> a subset of `checkpoint_dir` keeping half the routed experts, selected (layerwise,
    with its router profile) on that domain's training documents of `store_dir`."""
    from emomoe.select.subset import select_subset

    root = tmp_path_factory.mktemp("subsets")
    for domain in TokenStore.open(store_dir).domains:
        select_subset(checkpoint_dir, root / domain, calibration=domain, store=store_dir, keep="0.5",
                      num_calib_windows=16, seq_len=64)
    return {domain: root / domain for domain in TokenStore.open(store_dir).domains}


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
