"""Suite-wide settings, restored before every test because the trainer changes them.

- One torch thread: `make test` runs two pytest workers on two cores, and more threads than
  cores makes torch's CPU kernels orders of magnitude slower (measured: a 0.1 s test took 100 s).
- Denormals not flushed: the trainer flushes them for speed, but that process-wide flag makes
  hypothesis refuse to generate floats in any later test of the same worker.

Also the fixtures that tests of several packages share (a synthetic sweep result; a three-domain
token store and a tiny checkpoint that fits it).
"""

import random

import pytest
import torch

from emomoe.checkpoint import save_model
from emomoe.data.store import TokenStore
from emomoe.model import build_model
from tests.fixtures import three_domain_store, tiny_config


@pytest.fixture(autouse=True)
def torch_process_settings():
    torch.set_num_threads(1)
    torch.set_flush_denormal(False)
    yield


@pytest.fixture
def sweep_results():
    """A synthetic sweep result: two models, three domains, four keep fractions."""
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
    return {"loss": loss, "params": params, "settings": {"method": "layerwise", "num_calib_windows": 4}}


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
