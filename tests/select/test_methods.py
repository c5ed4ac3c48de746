import pytest
import torch
import torch.nn.functional as F

from emomoe.select.methods import ExpertSelector, SelectMethod, score_together
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model
from emomoe.select.weight_source import ModelWeights


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


class RecordingWeights(ModelWeights):
    """A model's weights that log every read as (name, rows or None)."""

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.reads = []

    def get(self, name, rows=None):
        self.reads.append((name, None if rows is None else list(rows)))
        return super().get(name, rows)


def _selector(tiny, batches, method, seed=0):
    model, cfg = tiny
    return ExpertSelector(ModelWeights(model, cfg), batches, method, seed=seed)


@pytest.mark.parametrize("keep", [[1, 1], [3, 5], [6, 2]])
def test_global_is_top_n_by_mean_router_probability(tiny, batches, keep):
    model, cfg = tiny
    layers = moe_layers(cfg)
    got = _selector(tiny, batches, SelectMethod.GLOBAL).choose(keep)
    expected = [_top(_mean_router_probs(model, batches, layer.index), n) for layer, n in zip(layers, keep)]
    assert got == expected


@pytest.mark.parametrize("keep", [[1, 1], [3, 5], [2, 4]])
def test_layerwise_measures_each_layer_on_the_model_pruned_before_it(tiny, batches, keep):
    model, cfg = tiny
    layers = moe_layers(cfg)
    got = _selector(tiny, batches, SelectMethod.LAYERWISE).choose(keep)
    # Reference: physically prune the layers chosen so far, run whole forwards, rank the next layer.
    kept = [list(range(layer.num_routed)) for layer in layers]
    for i, layer in enumerate(layers):
        pruned, _ = slice_model(model, cfg, layers, kept)
        kept[i] = _top(_mean_router_probs(pruned.eval(), batches, layer.index), keep[i])
    assert got == kept


def test_layerwise_reads_one_block_at_a_time_and_only_the_kept_experts(tiny, batches):
    model, cfg = tiny
    source = RecordingWeights(model, cfg)
    kept = ExpertSelector(source, batches, SelectMethod.LAYERWISE).choose([2, 3])
    expert_reads = [(name, rows) for name, rows in source.reads if ".moe.experts." in name]
    assert expert_reads == [
        (f"layers.{i}.moe.experts.{w}", [*kept[i], 7]) for i in range(2) for w in ("w1", "w2", "w3")
    ]
    blocks = [int(name.split(".")[1]) for name, _ in source.reads if name.startswith("layers.")]
    assert blocks == sorted(blocks)  # block 0 is done with before block 1 is read
    assert {name for name, _ in source.reads if not name.startswith("layers.")} == {"embed.weight"}
    embed_rows = [rows for name, rows in source.reads if name == "embed.weight"]
    assert embed_rows == [sorted(set(torch.cat([b["input_ids_BS"].flatten() for b in batches]).tolist()))]


def _routed_slots(model, cfg, batches):
    """Per MoE layer, every (expert, gate weight, |expert output|, 1 - cos(h, h + moe(h))) of every
    token's chosen experts, each expert's SwiGLU output computed by hand, one token at a time."""
    layers = moe_layers(cfg)
    slots = [[] for _ in layers]
    seen = {}

    def hook_for(i):
        def hook(module, args, output):
            seen[i] = (args[0], output[0])

        return hook

    moes = [model.layers[layer.index].moe for layer in layers]
    handles = [moe.register_forward_hook(hook_for(i)) for i, moe in enumerate(moes)]
    with torch.no_grad():
        for b in batches:
            routing = model(b["input_ids_BS"], return_routing=True).routing
            for i, layer in enumerate(layers):
                h_TD, m_TD = seen[i]
                experts = moes[i].experts
                r = routing[layer.index]
                for t in range(h_TD.shape[0]):
                    h = h_TD[t]
                    s = max(0.0, 1.0 - float(F.cosine_similarity(h, h + m_TD[t], dim=0)))
                    for e, g in zip(r.experts_TK[t].tolist(), r.weights_TK[t].tolist()):
                        out = experts.w2[e] @ (F.silu(experts.w1[e] @ h) * (experts.w3[e] @ h))
                        slots[i].append((e, g, float(out.norm()), s))
    for h in handles:
        h.remove()
    return slots


def test_easy_ep_scores_match_a_per_token_reference(tiny, batches):
    model, cfg = tiny
    selector = _selector(tiny, batches, SelectMethod.EASY_EP)
    got = selector.scores()
    expected = [torch.zeros(layer.num_routed, dtype=torch.float64) for layer in moe_layers(cfg)]
    for i, layer_slots in enumerate(_routed_slots(model, cfg, batches)):
        for e, g, norm, s in layer_slots:
            expected[i][e] += g * norm * s
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert all(float(g.sum()) > 0 for g in got)
    chosen = selector.choose([2, 3])
    assert chosen == [_top(expected[0], 2), _top(expected[1], 3)]


def test_reap_is_the_mean_over_routed_tokens_of_gate_weight_times_output_norm(tiny, batches):
    model, cfg = tiny
    selector = _selector(tiny, batches, SelectMethod.REAP)
    got = selector.scores()
    for i, layer_slots in enumerate(_routed_slots(model, cfg, batches)):
        per_expert = {}
        for e, g, norm, _ in layer_slots:
            per_expert.setdefault(e, []).append(g * norm)
        expected = torch.tensor(
            [sum(v) / len(v) if (v := per_expert.get(e)) else 0.0 for e in range(got[i].shape[0])], dtype=torch.float64
        )
        torch.testing.assert_close(got[i], expected, rtol=1e-4, atol=1e-7)
    assert selector.choose([3, 3]) == [_top(s, 3) for s in got]


def test_reap_scores_an_expert_no_token_chose_zero(tiny):
    model, cfg = tiny
    one_token = [{"input_ids_BS": torch.full((1, 8), 5)}]
    scores = _selector(tiny, one_token, SelectMethod.REAP).scores()
    with torch.no_grad():
        routing = model(one_token[0]["input_ids_BS"], return_routing=True).routing
    for layer, scores_E in zip(moe_layers(cfg), scores):
        chosen = set(routing[layer.index].experts_TK.flatten().tolist())
        assert 0 < len(chosen) < layer.num_routed  # 8 identical tokens leave some experts unused
        assert {e for e in range(layer.num_routed) if scores_E[e] > 0} == chosen


@pytest.mark.parametrize("method", [m for m in SelectMethod if m is not SelectMethod.RANDOM])
def test_the_profile_is_the_unpruned_router_mass_and_free_after_an_unpruned_pass(tiny, batches, method):
    model, cfg = tiny
    source = RecordingWeights(model, cfg)
    selector = ExpertSelector(source, batches, method)
    selector.choose([2, 2])
    profile = selector.profile()
    for layer, mass_E in zip(moe_layers(cfg), profile):
        expected_E = _mean_router_probs(model, batches, layer.index).double()
        torch.testing.assert_close(mass_E, expected_E, rtol=1e-5, atol=1e-7)
    passes = [name for name, _ in source.reads].count("embed.weight")  # read once by every pass
    # Layerwise runs its own pass, then one unpruned pass for the profile; the others reuse theirs.
    assert passes == (2 if method is SelectMethod.LAYERWISE else 1)
    assert selector.profile() is profile


def test_random_is_seeded_nested_and_ignores_data(tiny):
    pick = lambda seed, keep: _selector(tiny, [], SelectMethod.RANDOM, seed=seed).choose(keep)
    assert pick(0, [3, 3]) == pick(0, [3, 3])
    assert any(pick(s, [3, 3]) != pick(0, [3, 3]) for s in range(1, 5))
    small, large = pick(1, [2, 2]), pick(1, [5, 5])
    assert all(set(a) <= set(b) for a, b in zip(small, large))
    assert [len(k) for k in pick(2, [7, 1])] == [7, 1]


def test_scores_are_reused_across_keep_counts(tiny, batches):
    model, cfg = tiny
    source = RecordingWeights(model, cfg)
    selector = ExpertSelector(source, batches, SelectMethod.GLOBAL)
    selector.choose([2, 2])
    selector.choose([4, 4])
    assert [name for name, _ in source.reads].count("layers.0.attn.q_proj.weight") == 1


def test_layerwise_measures_layer_zero_once_for_several_counts(tiny, batches):
    model, cfg = tiny
    source = RecordingWeights(model, cfg)
    selector = ExpertSelector(source, batches, SelectMethod.LAYERWISE)
    first = selector.choose([2, 2])
    selector.choose([4, 4])
    again = selector.choose([2, 2])
    # A layer is measured with its whole gate (a pruned block reads only the kept rows): layer 0
    # once, layer 1 after keeping 2 and after keeping 4 experts of layer 0; the repeated [2, 2]
    # is answered from the cache.
    whole_gates = [name for name, rows in source.reads if name.endswith("gate.weight") and rows is None]
    assert whole_gates == ["layers.0.moe.router.gate.weight", "layers.1.moe.router.gate.weight"] + [
        "layers.1.moe.router.gate.weight"
    ]
    assert again == first


@pytest.mark.parametrize("method", [m for m in SelectMethod if m is not SelectMethod.RANDOM])
def test_budget_shares_are_the_scores_as_shares_of_their_layer(tiny, batches, method):
    model, cfg = tiny
    selector = _selector(tiny, batches, method)
    shares = selector.budget_shares()
    for layer, shares_E in zip(moe_layers(cfg), shares):
        if method in (SelectMethod.LAYERWISE, SelectMethod.GLOBAL):  # the unpruned router mass, a share already
            expected_E = _mean_router_probs(model, batches, layer.index).double()
        else:
            scores_E = selector.scores()[moe_layers(cfg).index(layer)]
            expected_E = scores_E / sum(scores_E.tolist())
        torch.testing.assert_close(shares_E, expected_E, rtol=1e-5, atol=1e-7)


def test_random_budget_shares_rank_every_layer_alike(tiny):
    shares = _selector(tiny, [], SelectMethod.RANDOM).budget_shares()
    by_rank = [sorted(shares_E.tolist(), reverse=True) for shares_E in shares]
    assert by_rank[0] == by_rank[1] == [(7 - r) / 28 for r in range(7)]


def test_a_profile_measured_elsewhere_is_used_as_it_is(tiny, batches):
    model, cfg = tiny
    source = RecordingWeights(model, cfg)
    profile = _selector(tiny, batches, SelectMethod.GLOBAL).profile()
    selector = ExpertSelector(source, batches, SelectMethod.LAYERWISE)
    selector.use_profile(profile)
    assert selector.profile() is profile and source.reads == []


def test_global_easy_ep_and_reap_scored_together_take_one_pass_and_score_as_alone(tiny, batches):
    model, cfg = tiny
    source = RecordingWeights(model, cfg)
    methods = [SelectMethod.GLOBAL, SelectMethod.EASY_EP, SelectMethod.REAP, SelectMethod.RANDOM]
    together = {m: ExpertSelector(source, batches, m) for m in methods}
    score_together(list(together.values()))
    assert [name for name, _ in source.reads].count("embed.weight") == 1
    for method in methods:
        alone = _selector(tiny, batches, method)
        # Bit for bit: a sweep that shares the pass selects exactly what separate passes select.
        assert all(torch.equal(a, b) for a, b in zip(together[method].scores(), alone.scores()))
        if method is not SelectMethod.RANDOM:
            assert all(torch.equal(a, b) for a, b in zip(together[method].profile(), alone.profile()))
    assert [name for name, _ in source.reads].count("embed.weight") == 1


def test_global_alone_keeps_its_own_pass(tiny, batches):
    model, cfg = tiny
    source = RecordingWeights(model, cfg)
    selector = ExpertSelector(source, batches, SelectMethod.GLOBAL)
    score_together([selector, ExpertSelector(source, batches, SelectMethod.LAYERWISE)])
    assert source.reads == []  # nothing run yet: global's own pass stops at the last gate
