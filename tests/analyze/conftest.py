import random

import pytest


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
