import collections
import functools

import pytest
import torch
import torch.utils.checkpoint

from emomoe import ModelConfig, build_model
from emomoe.errors import ConfigError
from emomoe.model.docs import doc_ids_from_eos
from emomoe.model.losses import compute_loss

EOS = 0


def _model(*overrides, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig.preset("tiny").with_overrides([f"eos_id={EOS}", *overrides])
    return build_model(cfg), cfg


def _ids(B=2, S=24, seed=0, eos_every=7):
    ids = torch.randint(1, 256, (B, S), generator=torch.Generator().manual_seed(seed))
    ids[:, eos_every::eos_every] = EOS
    return ids


def test_forward_returns_logits_losses_and_routing_per_layer():
    model, cfg = _model()
    out = model(_ids(), return_routing=True)
    assert out.logits.shape == (2, 24, cfg.vocab_size) and out.logits.dtype == torch.float32
    assert out.lb_loss.ndim == 0 and out.router_z_loss.ndim == 0 and out.lb_loss > 0
    assert len(out.routing) == cfg.num_layers
    for r in out.routing:
        assert r.router_logits_TE.shape == (48, 7)
        assert r.experts_TK.shape == r.weights_TK.shape == (48, 2)
        assert r.experts_TK.max() < 7
    assert model(_ids()).routing is None


def test_labels_replace_the_logits_by_the_fused_loss_except_under_autocast():
    model, cfg = _model()
    ids = _ids()
    for mode in (model.train, model.eval):
        mode()
        fused = model(ids, labels_BS=ids)
        assert fused.logits is None and fused.lm_loss.ce.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(ids, labels_BS=ids, return_routing=True)
        assert autocast.lm_loss is None and autocast.logits.dtype == torch.bfloat16
        assert autocast.lb_loss.dtype == torch.float32
        assert {r.router_logits_TE.dtype for r in autocast.routing} == {torch.bfloat16}
    with torch.no_grad():  # eval mode: no router losses, but the routing when asked for
        out = model(ids, labels_BS=ids, return_routing=True)
    assert out.logits is None and out.lb_loss is None and len(out.routing) == cfg.num_layers


def test_gradients_reach_the_router_and_exactly_the_experts_that_got_tokens():
    # Standard routing, so every routed gate row takes part in the softmax of every token.
    model, cfg = _model("moe.router.pool=off")
    ids = _ids(B=1, S=6)
    out = model(ids, return_routing=True)
    compute_loss(out, ids, cfg.loss)["total"].backward()
    for layer, routing in zip(model.layers, out.routing):
        moe = layer.moe
        assert moe.router.gate.weight.grad[:7].abs().sum(-1).gt(0).all()
        used = set(routing.experts_TK.flatten().tolist()) | {7}
        for e in range(8):
            got_grad = moe.experts.w1.grad[e].abs().sum() > 0
            assert got_grad == (e in used), f"expert {e}"


def test_the_same_seed_gives_the_same_pool_draws_and_output():
    ids = _ids(S=48, eos_every=3)
    runs = []
    for sampler_seed in (5, 5, 6):
        model, _ = _model("moe.router.pool=2..7")
        model.pool_sampler.seed = sampler_seed
        runs.append(model(ids, return_routing=True))
    same = [torch.equal(a.experts_TK, b.experts_TK) for a, b in zip(runs[0].routing, runs[1].routing)]
    assert all(same) and torch.equal(runs[0].logits, runs[1].logits)
    assert not all(torch.equal(a.experts_TK, c.experts_TK) for a, c in zip(runs[0].routing, runs[2].routing))


def test_a_resumed_sampler_replays_the_pool_draws():
    ids = _ids(S=48, eos_every=3)
    model, _ = _model("moe.router.pool=2..7")
    model(ids)
    state = model.pool_sampler.state_dict()
    expected = model(ids).logits
    model.pool_sampler.load_state_dict(state)
    assert torch.equal(model(ids).logits, expected)
    assert not torch.equal(model(ids).logits, expected)


def test_eval_mode_draws_nothing_and_uses_the_eval_pool():
    model, _ = _model("moe.router.pool=2..7", "moe.router.eval_pool=off")
    std, _ = _model("moe.router.pool=off")
    model.eval(), std.eval()
    ids = _ids()
    assert torch.equal(model(ids).logits, std(ids).logits)
    assert model.pool_sampler.num_forwards == 0


def test_doc_ids_default_to_eos_boundaries():
    model, _ = _model("moe.router.eval_pool=2")
    model.eval()
    ids = _ids(eos_every=5)
    assert torch.equal(model(ids).logits, model(ids, doc_ids_from_eos(ids, EOS)).logits)
    assert not torch.equal(model(ids).logits, model(ids, torch.zeros_like(ids)).logits)


@pytest.mark.parametrize("eval_pool", ["off", "3"])
def test_with_document_masking_a_packed_document_sees_nothing_of_its_neighbours(eval_pool):
    model, _ = _model(f"moe.router.eval_pool={eval_pool}")
    model.eval()
    first, second = _ids(B=1, S=9, seed=1), _ids(B=1, S=11, seed=2)
    first[0, -1] = EOS
    second[0, :] = second[0, :].clamp(min=1)
    packed = model(torch.cat([first, second], dim=1)).logits
    # RoPE makes attention depend on relative positions only, so the offset does not matter.
    assert torch.allclose(packed[:, :8], model(first).logits[:, :8], atol=1e-5)
    if eval_pool == "off":  # with a pool, the EOS closing `first` opens the next pool (test below)
        assert torch.allclose(packed[:, 9:], model(second).logits, atol=1e-5)
        assert torch.allclose(packed[:, :9], model(first).logits, atol=1e-5)


def _official_pool_routing(logits_TE, ids_BS, pool, top_k):
    """Experts and weights per token, from the official router's slicing: each row is cut at the
    positions of its EOS tokens but position 0, so [0, p1), [p1, p2), ..., [pn, S), and each piece
    keeps the `pool` experts of highest summed softmax."""
    B, S = ids_BS.shape
    logits_BSE = logits_TE.view(B, S, -1)
    experts, weights = torch.empty(B, S, top_k, dtype=torch.long), torch.empty(B, S, top_k)
    for b in range(B):
        cuts = [p for p in range(1, S) if ids_BS[b, p] == EOS] + [S]
        start = 0
        for end in cuts:
            piece = logits_BSE[b, start:end]
            dropped = (-piece.softmax(-1).sum(0)).topk(piece.shape[1] - pool).indices
            masked = piece.clone()
            masked[:, dropped] = float("-inf")
            weights[b, start:end], experts[b, start:end] = masked.softmax(-1).topk(top_k)
            start = end
    return experts.view(B * S, top_k), weights.view(B * S, top_k)


def test_the_pool_of_a_document_starts_at_the_eos_before_it_as_in_the_official_router():
    model, cfg = _model("moe.router.eval_pool=3")
    model.eval()
    ids = _ids(B=3, S=16, seed=3, eos_every=100)
    ids[0, [5, 11]] = EOS  # EOS tokens between documents
    ids[1, [0, 6, 7, 15]] = EOS  # a row that starts with EOS, an empty document, an EOS at the end
    ids[2, [3]] = EOS
    with torch.no_grad():
        out = model(ids, doc_ids_from_eos(ids, EOS), return_routing=True)
    for layer in out.routing:
        experts_TK, weights_TK = _official_pool_routing(layer.router_logits_TE, ids, 3, cfg.moe.top_k)
        assert torch.equal(layer.experts_TK.sort(-1).values, experts_TK.sort(-1).values)
        assert torch.allclose(layer.weights_TK.sort(-1).values, weights_TK.sort(-1).values, atol=1e-6)


def test_without_document_masking_attention_crosses_documents():
    model, _ = _model("doc_attention_mask=false")
    model.eval()
    first, second = _ids(B=1, S=9, seed=1), _ids(B=1, S=11, seed=2)
    first[0, -1] = EOS
    packed = model(torch.cat([first, second], dim=1)).logits
    assert not torch.allclose(packed[:, 9:], model(second).logits, atol=1e-3)


def _aten_calls(fn) -> collections.Counter:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter({event.key: event.count for event in prof.key_averages()})


def test_an_eval_forward_without_autograd_skips_the_router_losses_and_their_kernels():
    model, cfg = _model()
    model.eval()
    ids, outs = _ids(), {}
    with torch.inference_mode():
        calls = {
            aux: _aten_calls(lambda aux=aux: outs.__setitem__(aux, model(ids, return_routing=True, aux_losses=aux)))
            for aux in (None, True)
        }
        cache = model.new_cache(2, 30)
        decode_calls = _aten_calls(lambda: [model.decode(ids, cache), model.decode(ids[:, :1], cache)])
    skipped, full = outs[None], outs[True]
    assert skipped.lb_loss is None and skipped.router_z_loss is None
    assert full.lb_loss > 0 and full.router_z_loss > 0
    assert torch.equal(skipped.logits, full.logits)
    for a, b in zip(skipped.routing, full.routing):
        assert torch.equal(a.experts_TK, b.experts_TK) and torch.equal(a.weights_TK, b.weights_TK)
    # The z-loss's log and the LB's expert counts run once per MoE layer, and only when asked for.
    assert calls[True]["aten::log"] == cfg.num_layers and calls[None]["aten::log"] == 0
    assert calls[True]["aten::scatter_add_"] - calls[None]["aten::scatter_add_"] == cfg.num_layers
    assert decode_calls["aten::log"] == 0 and decode_calls["aten::mm"] > 0
    with pytest.raises(ValueError, match="skipped the router losses"):
        compute_loss(skipped, ids, cfg.loss)


def test_router_losses_are_computed_in_training_mode_or_with_autograd():
    model, _ = _model()
    with torch.no_grad():
        assert model(_ids()).lb_loss is not None  # training mode, e.g. a loss probe
    model.eval()
    out = model(_ids())
    assert out.lb_loss is not None and out.lb_loss.requires_grad


def test_layers_without_routed_experts_are_dense_and_report_empty_routing():
    model, _ = _model("moe.num_experts=1", "moe.top_k=0", "moe.router.pool=off")
    out = model(_ids(), return_routing=True)
    assert all(layer.moe.router is None for layer in model.layers)
    assert [r.experts_TK.shape for r in out.routing] == [(48, 0), (48, 0)]
    assert out.lb_loss == 0 and out.router_z_loss == 0


def test_sliced_subsets_with_different_expert_counts_per_layer_run():
    model, _ = _model("moe.num_experts_per_layer=[3, 8]")
    assert [layer.moe.experts.w1.shape[0] for layer in model.layers] == [3, 8]
    assert [layer.moe.router.gate.weight.shape[0] for layer in model.layers] == [3, 8]
    out = model(_ids(), return_routing=True)
    assert [r.router_logits_TE.shape[1] for r in out.routing] == [2, 7]


def test_update_router_biases_moves_the_bias_only_when_enabled():
    model, _ = _model("moe.router.bias_update_rate=0.01")
    model(_ids())
    model.update_router_biases()
    assert all(layer.moe.router.score_bias_E.abs().sum() > 0 for layer in model.layers)
    plain, _ = _model()
    plain(_ids())
    plain.update_router_biases()
    assert "score_bias_E" not in dict(plain.named_buffers())


def test_lb_history_round_trips_and_refuses_another_window():
    model, _ = _model("moe.router.lb_window=3")
    model.train()
    model(_ids(), labels_BS=_ids())
    history = model.lb_history()
    num_routed = model.layers[0].moe.router.num_routed
    assert len(history) == len(model.layers) and all(t.shape == (2, num_routed + 1) for t in history)
    assert all(t[-1, -1] == 2 * 24 and t[0].sum() == 0 for t in history)  # this forward's tokens, last row
    fresh, _ = _model("moe.router.lb_window=3")
    fresh.load_lb_history(history)
    assert all(torch.equal(a, b) for a, b in zip(fresh.lb_history(), history))
    other, _ = _model("moe.router.lb_window=5")
    with pytest.raises(ConfigError, match="lb_window cannot change on resume"):
        other.load_lb_history(history)


def test_init_is_a_truncated_normal_with_the_configured_std():
    model, cfg = _model()
    w = torch.cat([model.layers[0].moe.experts.w1.flatten(), model.embed.weight.flatten()])
    assert w.abs().max() <= 3 * cfg.init_std
    assert abs(w.std().item() - cfg.init_std * 0.986) < 0.001  # a +-3 sigma truncation shrinks std by ~1.4%
    assert torch.equal(model.norm.weight, torch.ones(cfg.d_model))


def test_sequences_longer_than_max_seq_len_are_rejected():
    model, cfg = _model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, cfg.max_seq_len + 1, dtype=torch.long))


def test_activation_recompute_of_a_layer_draws_the_same_pool_sizes():
    ids = _ids(S=48, eos_every=3)
    grads = []
    for recompute in (False, True):
        model, cfg = _model("moe.router.pool=2..7")
        if recompute:
            for layer in model.layers:
                layer.forward = functools.partial(
                    torch.utils.checkpoint.checkpoint, type(layer).forward, layer, use_reentrant=False
                )
        compute_loss(model(ids), ids, cfg.loss)["total"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("seeds_as", ["tensors", "ints"])
def test_compiled_blocks_do_not_recompile_for_new_pool_seeds(seeds_as, monkeypatch):
    from torch._dynamo.testing import CompileCounter

    from emomoe.model import transformer

    if seeds_as == "ints":  # what passing the sampler's integers would do
        monkeypatch.setattr(transformer, "seed_tensors", lambda seeds, device: seeds)
    torch._dynamo.reset()
    model, _ = _model()  # the tiny preset draws pools from 2..8 in training
    counter = CompileCounter()
    for block in model.layers:
        block.compile(backend=counter)
    ids = _ids()
    model(ids)
    frames_after_first_forward = counter.frame_count
    for _ in range(3):  # a new forward index, so new seeds, every time
        model(ids)
    if seeds_as == "tensors":
        assert counter.frame_count == frames_after_first_forward
    else:
        assert counter.frame_count > frames_after_first_forward
    torch._dynamo.reset()
