import pytest
import torch

from emomoe.checkpoint import save_model
from emomoe.data.store import TokenStore
from emomoe.model import ModelConfig, build_model
from tests.fixtures import three_domain_store


def tiny_config(num_layers: int = 2, pool: str = "2..8") -> ModelConfig:
    cfg = ModelConfig.preset("tiny").with_overrides([f"num_layers={num_layers}", f"moe.router.pool={pool}"])
    return cfg


@pytest.fixture(scope="module")
def tiny():
    """A tiny EMO model in eval mode with peaked routing (so dropping experts matters). Do not modify it."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.layers:
            block.moe.router.gate.weight.mul_(40.0)
    return model, cfg


def _random_ids(cfg: ModelConfig, batch: int = 2, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def random_ids():
    """random_ids(cfg, batch=2, seq=16, seed=0) -> token ids [batch, seq]."""
    return _random_ids


@pytest.fixture(scope="module")
def make_tiny_config():
    """make_tiny_config(num_layers=2, pool="2..8") -> the tiny preset with those fields."""
    return tiny_config


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
