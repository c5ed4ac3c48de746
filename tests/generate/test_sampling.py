import math

import pytest
import torch

from emomoe.errors import ConfigError
from emomoe.generate.config import GenerationConfig
from emomoe.generate.sampling import next_tokens, sampling_probs, top_p_keep

PROBS = [0.05, 0.5, 0.15, 0.3]


def _logits(probs=PROBS):
    return torch.tensor([probs]).log()


def test_top_p_keeps_the_most_likely_tokens_until_their_mass_reaches_p():
    probs_BV = torch.tensor([PROBS])
    # Sorted: 0.5 (before: 0), 0.3 (0.5), 0.15 (0.8), 0.05 (0.95).
    assert top_p_keep(probs_BV, 0.75).tolist() == [[False, True, False, True]]
    assert top_p_keep(probs_BV, 0.85).tolist() == [[False, True, True, True]]
    assert top_p_keep(probs_BV, 0.4).tolist() == [[False, True, False, False]]
    assert top_p_keep(probs_BV, 1.0).all()


def test_sampling_probs_apply_temperature_then_renormalise_the_nucleus():
    probs = sampling_probs(_logits(), temperature=1.0, top_p=0.75)[0]
    assert torch.allclose(probs, torch.tensor([0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]))
    # T = 0.5 squares the probabilities before normalising.
    squared = [p * p for p in PROBS]
    expected = [p / sum(squared) for p in squared]
    assert torch.allclose(sampling_probs(_logits(), temperature=0.5, top_p=1.0)[0], torch.tensor(expected))


def test_draws_respect_the_nucleus_follow_its_distribution_and_repeat_by_seed():
    logits_BV = _logits().expand(4000, 4)
    cfg = GenerationConfig(top_p=0.75, seed=3)
    draws = next_tokens(logits_BV, cfg, torch.Generator().manual_seed(cfg.seed))
    assert set(draws.tolist()) == {1, 3}
    share_of_1 = (draws == 1).float().mean().item()
    assert math.isclose(share_of_1, 0.625, abs_tol=0.03)
    again = next_tokens(logits_BV, cfg, torch.Generator().manual_seed(cfg.seed))
    other = next_tokens(logits_BV, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(draws, again) and not torch.equal(draws, other)


def test_greedy_and_zero_temperature_take_the_argmax():
    logits_BV = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    for cfg in (GenerationConfig(greedy=True, temperature=5.0), GenerationConfig(temperature=0)):
        assert next_tokens(logits_BV, cfg, None).tolist() == [1, 0]


@pytest.mark.parametrize("field,value", [("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", -1)])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig.from_dict({field: value})
