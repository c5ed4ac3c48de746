import pytest
import torch

from emomoe.model import ModelConfig, build_model
from tests.fixtures import tiny_config


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
