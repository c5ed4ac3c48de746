"""Selections as routing masks: the full model restricted to a selection against the sliced subset
(an independent reference: `emomoe.select` copies the kept rows into a smaller model), switching
between selections, and choosing one from a prompt's router mass."""

import pytest
import torch

from emomoe.generate import GenerationConfig, generate
from emomoe.model import build_model
from emomoe.model.selection import PROFILE_FLOOR, Selection, Selections, profile_scores, prompt_mass
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model
from tests.fixtures import tiny_config

KEPT = [[0, 3, 5], [1], [2, 4, 5, 6]]


@pytest.fixture(scope="module")
def model():
    """A 3-layer tiny model, pool-free in eval mode, with peaked routing. Do not modify it."""
    torch.manual_seed(0)
    cfg = tiny_config(num_layers=3).with_overrides(["moe.router.eval_pool=off", "eos_id=0"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.layers:
            block.moe.router.gate.weight.mul_(10.0)
    return model


def _ids(batch=3, seq=20, seed=0):
    return torch.randint(1, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _sliced(model, kept):
    subset, _ = slice_model(model, model.cfg, moe_layers(model.cfg), kept)
    return subset.eval()


def test_restricted_logits_and_routing_are_the_sliced_subsets(model):
    ids_BS = _ids()
    subset = _sliced(model, KEPT)
    with torch.no_grad():
        reference = subset(ids_BS, return_routing=True)
        model.restrict_experts(KEPT)
        got = model(ids_BS, return_routing=True)
        model.restrict_experts(None)
        full = model(ids_BS).logits
    for kept, mine, theirs in zip(KEPT, got.routing, reference.routing):
        assert torch.equal(mine.experts_TK, torch.tensor(kept)[theirs.experts_TK])
        assert torch.equal(mine.weights_TK, theirs.weights_TK)
    # Same routing, same weights: the logits differ at most by the summation order of a matmul
    # over a different number of experts (they are bitwise equal on this CPU).
    torch.testing.assert_close(got.logits, reference.logits, rtol=1e-6, atol=1e-6)
    assert (full - reference.logits).abs().max() > 1e-2  # the restriction matters
    assert not any(name.endswith("kept_E") for name in model.state_dict())


def test_generation_with_a_kv_cache_under_a_restriction_is_the_subsets(model):
    prompts = [[5, 9, 200, 7], [11, 3]]
    cfg = GenerationConfig(max_new_tokens=12, greedy=True)
    expected = [c.tokens for c in generate(_sliced(model, KEPT), prompts, cfg)]
    model.restrict_experts(KEPT)
    try:
        got = [c.tokens for c in generate(model, prompts, cfg)]
    finally:
        model.restrict_experts(None)
    assert got == expected
    assert [c.tokens for c in generate(model, prompts, cfg)] != expected


def test_a_restriction_needs_one_list_per_moe_layer(model):
    with pytest.raises(ValueError, match="2 lists of kept experts for 3 MoE layers"):
        model.restrict_experts(KEPT[:2])


def test_prompt_mass_is_each_prompts_own_mean_over_its_first_tokens(model):
    prompts = [[5, 9, 200, 7, 8, 1], [11, 3], [40] * 9]
    masses = prompt_mass(model, prompts, num_tokens=4)
    assert len(masses) == 3 and all(m.shape == (3, 7) for m in masses)
    for b, prompt in enumerate(prompts):
        with torch.no_grad():
            routing = model(torch.tensor([prompt[:4]]), return_routing=True).routing
        for layer, mass_BE in enumerate(masses):
            expected_E = routing[layer].router_logits_TE.softmax(dim=-1).mean(dim=0)
            torch.testing.assert_close(mass_BE[b], expected_E, rtol=1e-5, atol=1e-6)


def test_profile_scores_are_the_negative_cross_entropy_summed_over_layers():
    masses = [torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[1.0, 0.0]])]
    profiles = [[torch.tensor([0.25, 0.25, 0.5]), torch.tensor([0.5, 0.5])],
                [torch.tensor([0.5, 0.5, 0.0]), torch.tensor([1.0, 0.0])]]
    scores_BQ = profile_scores(masses, profiles)
    log = lambda p: torch.log(torch.tensor(p, dtype=torch.float64))  # noqa: E731
    # Profile 0: layer 0 gives 0.5 log 0.25 twice (the 0 mass ignores the 0.5), layer 1 log 0.5.
    # Profile 1: layer 0 gives 0.5 log 0.5 twice, layer 1 1.0 log 1.0 (and 0 x log of the floor).
    torch.testing.assert_close(scores_BQ, torch.stack([log(0.25) + log(0.5), log(0.5)])[None])
    # A profile's zero is floored, so an expert a domain never uses does not rule it out.
    floored = profile_scores([torch.tensor([[0.0, 1.0]])], [[torch.tensor([1.0, 0.0])]])
    assert floored.item() == pytest.approx(log(PROFILE_FLOOR).item())


def _profiles_of(model, prompts):
    """Each prompt's own router mass as a profile: choosing must then give each prompt its own."""
    masses = prompt_mass(model, prompts, num_tokens=16)
    return [[mass_BE[b] for mass_BE in masses] for b in range(len(prompts))]


def test_auto_chooses_the_selection_whose_profile_the_prompt_matches(model):
    prompts = [[int(t) for t in _ids(1, 16, seed=s)[0]] for s in range(3)]
    profiles = _profiles_of(model, prompts)
    names = ["a", "b", "c"]
    selections = Selections(
        model, [Selection(n, KEPT, p) for n, p in zip(names, profiles)], auto=True, auto_tokens=16
    )
    assert selections.active is None
    assert selections.choose(prompts) == names
    assert selections.groups([prompts[2], prompts[0], prompts[2]]) == {"c": [0, 2], "a": [1]}


def test_selections_switch_without_touching_the_weights(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = [[1, 2], [0, 6], [3]]
    with pytest.raises(ValueError, match="exactly one selection"):
        Selections(model, [Selection("x", KEPT), Selection("y", other)], auto=False, auto_tokens=8)
    with pytest.raises(ValueError, match="calibration profile"):
        Selections(model, [Selection("x", KEPT), Selection("y", other)], auto=True, auto_tokens=8)
    profile = [torch.full((7,), 1 / 7)] * 3
    selections = Selections(model, [Selection("x", KEPT, profile), Selection("y", other, profile)], auto=True,
                            auto_tokens=8)
    ids_BS = _ids(2, 10, seed=4)
    with torch.no_grad():
        with selections.using("y"):
            y_logits = model(ids_BS).logits
            with selections.using("x"):
                x_logits = model(ids_BS).logits
            assert selections.active == "y"
        full = model(ids_BS).logits
        torch.testing.assert_close(x_logits, _sliced(model, KEPT)(ids_BS).logits, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(y_logits, _sliced(model, other)(ids_BS).logits, rtol=1e-6, atol=1e-6)
    assert selections.active is None and all(r.kept_E is None for r in model._routers())
    assert (full - x_logits).abs().max() > 1e-2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    fixed = Selections(model, [Selection("x", KEPT)], auto=False, auto_tokens=8)
    try:
        assert fixed.active == "x" and fixed.groups([[1], [2], [3]]) == {"x": [0, 1, 2]}
    finally:
        fixed.use(None)
