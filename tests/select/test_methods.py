import pytest
import torch
import torch.nn.functional as F

from emomoe.select.easy_ep import easy_ep_scores
from emomoe.select.methods import ExpertSelector, SelectMethod
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model


@pytest.fixture(scope="module")
def batches(tiny, random_ids):
    _, cfg = tiny
    return [{"input_ids_BS": random_ids(cfg, batch=2, seq=16, seed=s)} for s in range(3)]


def _mean_router_probs(model, batches, layer_pos):
    """Reference: token-mean softmax of one MoE layer's routed logits, from full forwards."""
    probs = []
    with torch.no_grad():
        for b in batches:
            routing = model(b["input_ids_BS"], return_routing=True).routing
            probs.append(routing[layer_pos].router_logits_TE.softmax(-1))
    return torch.cat(probs).mean(0)


def _top(scores, n):
    return sorted(scores.topk(n).indices.tolist())


@pytest.mark.parametrize("keep", [[1, 1], [3, 5], [6, 2]])
def test_global_is_top_n_by_mean_router_probability(tiny, batches, keep):
    model, _ = tiny
    layers = moe_layers(model)
    got = ExpertSelector(model, layers, batches, SelectMethod.GLOBAL).choose(keep)
    expected = [_top(_mean_router_probs(model, batches, layer.index), n) for layer, n in zip(layers, keep)]
    assert got == expected


@pytest.mark.parametrize("keep", [[1, 1], [3, 5], [2, 4]])
def test_layerwise_measures_each_layer_on_the_model_pruned_before_it(tiny, batches, keep):
    model, cfg = tiny
    layers = moe_layers(model)
    got = ExpertSelector(model, layers, batches, SelectMethod.LAYERWISE).choose(keep)
    # Reference: physically prune the layers chosen so far, run whole forwards, rank the next layer.
    kept = [list(range(layer.num_routed)) for layer in layers]
    for i, layer in enumerate(layers):
        pruned, _ = slice_model(model, cfg, layers, kept)
        kept[i] = _top(_mean_router_probs(pruned.eval(), batches, layer.index), keep[i])
    assert got == kept


def test_layerwise_passes_stop_after_the_layer_being_measured(tiny, batches):
    model, _ = tiny
    layers = moe_layers(model)
    reached = []
    handle = model.lm_head.register_forward_hook(lambda *a: reached.append(1))
    try:
        ExpertSelector(model, layers, batches, SelectMethod.LAYERWISE).choose([2, 2])
    finally:
        handle.remove()
    assert reached == []


def _easy_ep_reference(model, batches):
    """Loop over tokens and their chosen experts, computing each expert's SwiGLU output by hand."""
    layers = moe_layers(model)
    scores = [torch.zeros(layer.num_routed, dtype=torch.float64) for layer in layers]
    seen = {}

    def hook_for(i):
        def hook(module, args, output):
            seen[i] = (args[0], output[0])

        return hook

    handles = [layer.moe.register_forward_hook(hook_for(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for b in batches:
            routing = model(b["input_ids_BS"], return_routing=True).routing
            for i, layer in enumerate(layers):
                h_TD, m_TD = seen[i]
                experts = layer.moe.experts
                r = routing[layer.index]
                for t in range(h_TD.shape[0]):
                    h = h_TD[t]
                    s = max(0.0, 1.0 - float(F.cosine_similarity(h, h + m_TD[t], dim=0)))
                    for e, g in zip(r.experts_TK[t].tolist(), r.weights_TK[t].tolist()):
                        out = experts.w2[e] @ (F.silu(experts.w1[e] @ h) * (experts.w3[e] @ h))
                        scores[i][e] += g * float(out.norm()) * s
    for h in handles:
        h.remove()
    return scores


def test_easy_ep_scores_match_a_per_token_reference(tiny, batches):
    model, _ = tiny
    layers = moe_layers(model)
    with torch.no_grad():
        got = easy_ep_scores(model, layers, batches)
    expected = _easy_ep_reference(model, batches)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert all(float(g.sum()) > 0 for g in got)
    chosen = ExpertSelector(model, layers, batches, SelectMethod.EASY_EP).choose([2, 3])
    assert chosen == [_top(expected[0], 2), _top(expected[1], 3)]


def test_random_is_seeded_nested_and_ignores_data(tiny):
    model, _ = tiny
    layers = moe_layers(model)
    pick = lambda seed, keep: ExpertSelector(model, layers, [], SelectMethod.RANDOM, seed=seed).choose(keep)
    assert pick(0, [3, 3]) == pick(0, [3, 3])
    assert any(pick(s, [3, 3]) != pick(0, [3, 3]) for s in range(1, 5))
    small, large = pick(1, [2, 2]), pick(1, [5, 5])
    assert all(set(a) <= set(b) for a, b in zip(small, large))
    assert [len(k) for k in pick(2, [7, 1])] == [7, 1]


def test_scores_are_reused_across_keep_counts(tiny, batches):
    model, _ = tiny
    layers = moe_layers(model)
    calls = []
    handle = model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        selector = ExpertSelector(model, layers, batches, SelectMethod.GLOBAL)
        selector.choose([2, 2])
        selector.choose([4, 4])
    finally:
        handle.remove()
    assert len(calls) == len(batches)


def test_layerwise_measures_layer_zero_once_for_several_counts(tiny, batches):
    model, _ = tiny
    layers = moe_layers(model)
    gate_calls = []
    handle = layers[0].gate.register_forward_hook(lambda *a: gate_calls.append(1))
    try:
        selector = ExpertSelector(model, layers, batches, SelectMethod.LAYERWISE)
        first = selector.choose([2, 2])
        selector.choose([4, 4])
        again = selector.choose([2, 2])
    finally:
        handle.remove()
    # Passes through layer 0: measuring layer 0 (once), measuring layer 1 after keeping 2 and
    # after keeping 4 experts of layer 0; the repeated [2, 2] is answered from the cache.
    assert len(gate_calls) == 3 * len(batches)
    assert again == first
