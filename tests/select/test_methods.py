import pytest
import torch
import torch.nn.functional as F

from emomoe.select.methods import ExpertSelector, SelectMethod
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


def _easy_ep_reference(model, cfg, batches):
    """Loop over tokens and their chosen experts, computing each expert's SwiGLU output by hand."""
    layers = moe_layers(cfg)
    scores = [torch.zeros(layer.num_routed, dtype=torch.float64) for layer in layers]
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
                        scores[i][e] += g * float(out.norm()) * s
    for h in handles:
        h.remove()
    return scores


def test_easy_ep_scores_match_a_per_token_reference(tiny, batches):
    model, cfg = tiny
    selector = _selector(tiny, batches, SelectMethod.EASY_EP)
    got = selector.scores()
    expected = _easy_ep_reference(model, cfg, batches)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert all(float(g.sum()) > 0 for g in got)
    chosen = selector.choose([2, 3])
    assert chosen == [_top(expected[0], 2), _top(expected[1], 3)]


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
