import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.model.config import RouterConfig
from emomoe.model.docs import Segments
from emomoe.model.router import Router


@st.composite
def routing_cases(draw):
    num_routed = draw(st.integers(2, 10))
    top_k = draw(st.integers(1, num_routed))
    pool = draw(st.integers(top_k, num_routed + 1))
    num_rows = draw(st.integers(1, 3))
    seq_len = draw(st.integers(1, 8))
    row = st.lists(st.booleans(), min_size=seq_len, max_size=seq_len)
    boundaries = draw(st.lists(row, min_size=num_rows, max_size=num_rows))
    num_shared = draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2**16))
    return num_routed, num_shared, top_k, pool, boundaries, seed


def _make_router(num_routed, num_shared, top_k, seed, **cfg):
    torch.manual_seed(seed)
    return Router(6, num_routed + num_shared, top_k, RouterConfig(num_shared_experts=num_shared, **cfg)).double()


def _reference_route(logits_TE, doc_ids_BS, d, top_k):
    """Slow and obvious: each (row, document) on its own, as the paper describes it."""
    B, S = doc_ids_BS.shape
    experts, weights, pools = [None] * (B * S), [None] * (B * S), [None] * (B * S)
    for b in range(B):
        for doc in doc_ids_BS[b].unique().tolist():
            tokens = [b * S + s for s in range(S) if doc_ids_BS[b, s] == doc]
            logits = logits_TE[tokens]
            summed = logits.softmax(-1).sum(0)
            pool = sorted(range(len(summed)), key=lambda e: -summed[e].item())[:d]
            masked = torch.full_like(logits, float("-inf"))
            masked[:, pool] = logits[:, pool]
            w, e = masked.softmax(-1).topk(top_k, dim=-1)
            for i, t in enumerate(tokens):
                experts[t], weights[t], pools[t] = e[i], w[i], set(pool)
    return torch.stack(experts), torch.stack(weights), pools


def _route_with_eval_pool(case):
    """Route a drawn case through a router in eval mode with a fixed pool of the drawn size."""
    num_routed, num_shared, top_k, pool, boundaries, seed = case
    router = _make_router(num_routed, num_shared, top_k, seed, eval_pool=str(pool))
    router.eval()
    doc_ids_BS = torch.tensor(boundaries).long().cumsum(1)
    x_TD = torch.randn(doc_ids_BS.numel(), 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return router, doc_ids_BS, x_TD, router(x_TD, Segments.from_doc_ids(doc_ids_BS))


def _sorted_by_expert(experts_TK, weights_TK):
    order = experts_TK.argsort(-1)
    return experts_TK.gather(1, order), weights_TK.gather(1, order)


@settings(max_examples=80, deadline=None)
@given(routing_cases())
def test_fixed_eval_pool_matches_a_per_document_loop(case):
    num_routed, _, top_k, pool, _, _ = case
    router, doc_ids_BS, x_TD, out = _route_with_eval_pool(case)

    assert torch.allclose(out.logits_TE, x_TD @ router.gate.weight[:num_routed].T)
    ref_experts, ref_weights, pools = _reference_route(out.logits_TE, doc_ids_BS, pool, top_k)
    got_e, got_w = _sorted_by_expert(out.experts_TK, out.weights_TK)
    ref_e, ref_w = _sorted_by_expert(ref_experts, ref_weights)
    assert torch.equal(got_e, ref_e)
    assert torch.allclose(got_w, ref_w)
    for t, chosen in enumerate(out.experts_TK.tolist()):
        assert set(chosen) <= pools[t]


@settings(max_examples=40, deadline=None)
@given(routing_cases(), st.sampled_from(["off", "large"]))
def test_pool_off_or_at_least_all_routed_experts_is_the_standard_router(case, mode):
    num_routed, num_shared, top_k, _, boundaries, seed = case
    pool = "off" if mode == "off" else f"{num_routed}..{num_routed + 3}"
    emo = _make_router(num_routed, num_shared, top_k, seed, pool=pool)
    std = _make_router(num_routed, num_shared, top_k, seed)
    doc_ids_BS = torch.tensor(boundaries).long().cumsum(1)
    x_TD = torch.randn(doc_ids_BS.numel(), 6, dtype=torch.float64)
    a, b = emo(x_TD, Segments.from_doc_ids(doc_ids_BS)), std(x_TD)
    assert torch.equal(a.experts_TK, b.experts_TK) and torch.equal(a.weights_TK, b.weights_TK)
    assert torch.allclose(a.lb_loss, b.lb_loss) and torch.allclose(a.z_loss, b.z_loss)
    probs_TE = b.logits_TE.softmax(-1)
    assert torch.allclose(b.weights_TK, probs_TE.topk(min(top_k, num_routed), -1).values)


def test_training_draws_follow_the_given_seed():
    router = _make_router(12, 1, 2, 0, pool="2..13")
    doc_ids_BS = torch.arange(40).div(4, rounding_mode="floor")[None]
    segments = Segments.from_doc_ids(doc_ids_BS)
    x_TD = torch.randn(40, 6, dtype=torch.float64)
    route = lambda seed: router(x_TD, segments, seed).experts_TK
    assert torch.equal(route(1), route(1))
    assert not torch.equal(route(1), route(2))


def test_eval_mode_uses_the_eval_pool_not_the_training_range():
    router = _make_router(12, 1, 2, 0, pool="2..13", eval_pool="off")
    std = _make_router(12, 1, 2, 0)
    router.eval()
    x_TD = torch.randn(20, 6, dtype=torch.float64)
    assert torch.equal(router(x_TD).experts_TK, std(x_TD).experts_TK)


def test_an_active_pool_without_segments_is_an_error():
    router = _make_router(8, 1, 2, 0, pool="2")
    with pytest.raises(ValueError, match="segments"):
        router(torch.randn(4, 6, dtype=torch.float64))


def test_renormalize_makes_top_k_weights_sum_to_one():
    router = _make_router(8, 1, 3, 0, renormalize=True)
    out = router(torch.randn(10, 6, dtype=torch.float64))
    assert torch.allclose(out.weights_TK.sum(-1), torch.ones(10, dtype=torch.float64))
    plain = _make_router(8, 1, 3, 0)
    assert (plain(torch.randn(10, 6, dtype=torch.float64)).weights_TK.sum(-1) < 1).all()


def test_the_shared_gate_rows_never_influence_routing():
    router = _make_router(6, 2, 2, 0)
    x_TD = torch.randn(10, 6, dtype=torch.float64)
    before = router(x_TD)
    with torch.no_grad():
        router.gate.weight[6:] = 100.0
    after = router(x_TD)
    assert torch.equal(before.experts_TK, after.experts_TK) and torch.equal(before.weights_TK, after.weights_TK)


def test_router_z_loss_is_over_the_pool_masked_logits():
    router = _make_router(8, 1, 2, 0, eval_pool="2")
    router.eval()
    doc_ids_BS = torch.tensor([[0, 0, 0, 1, 1]])
    x_TD = torch.randn(5, 6, dtype=torch.float64)
    out = router(x_TD, Segments.from_doc_ids(doc_ids_BS))
    # With a pool of 2 and top-2, every token's weights are its whole masked softmax.
    assert torch.allclose(out.weights_TK.sum(-1), torch.ones(5, dtype=torch.float64))
    lse_T = out.logits_TE.gather(1, out.experts_TK).logsumexp(-1)
    assert torch.allclose(out.z_loss, lse_T.square().mean())


def test_bias_balancing_moves_selection_toward_underused_experts():
    router = _make_router(4, 1, 1, 0, bias_update_rate=0.02)
    x_TD = torch.randn(64, 6, dtype=torch.float64)
    first = router(x_TD)
    counts = torch.bincount(first.experts_TK.flatten(), minlength=4)
    router.update_bias()
    assert torch.equal(torch.sign(router.score_bias_E), torch.sign(counts.double().mean() - counts))
    assert not router.pending_counts_E.any()
    second = router(x_TD)
    underused = router.score_bias_E > 0
    assert torch.bincount(second.experts_TK.flatten(), minlength=4)[underused].sum() > counts[underused].sum()
    # The weights stay the unbiased probabilities of the chosen experts.
    probs_TE = second.logits_TE.softmax(-1)
    assert torch.allclose(second.weights_TK, probs_TE.gather(1, second.experts_TK))


def test_skipping_the_losses_keeps_the_routing_and_the_bias_counts():
    x_TD = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    routers = [_make_router(9, 1, 3, seed=0, bias_update_rate=0.1) for _ in range(2)]
    full, skipped = routers[0](x_TD), routers[1](x_TD, aux_losses=False)
    assert skipped.lb_loss is None and skipped.z_loss is None and full.lb_loss is not None
    assert torch.equal(full.experts_TK, skipped.experts_TK) and torch.equal(full.weights_TK, skipped.weights_TK)
    expected_E = torch.bincount(full.experts_TK.flatten(), minlength=9).float()
    assert torch.equal(routers[0].pending_counts_E, expected_E)
    assert torch.equal(routers[1].pending_counts_E, expected_E)


def test_biased_selection_stays_inside_the_pool():
    router = _make_router(8, 1, 2, 0, eval_pool="2", bias_update_rate=1.0)
    router.eval()
    with torch.no_grad():
        router.score_bias_E[:] = torch.arange(8.0) * 10
    doc_ids_BS = torch.zeros(1, 6, dtype=torch.long)
    out = router(torch.randn(6, 6, dtype=torch.float64), Segments.from_doc_ids(doc_ids_BS))
    assert len(out.experts_TK.unique()) == 2
    assert (out.weights_TK > 0).all()


def test_lb_window_counts_the_last_training_forwards_and_this_batch_probabilities():
    window, num_routed, top_k = 3, 5, 2
    router = _make_router(num_routed, 1, top_k, 0, lb_window=window)
    g = torch.Generator().manual_seed(0)
    counts, tokens = [], []
    for i, num_tokens in enumerate([7, 4, 9, 5, 6]):
        x_TD = torch.randn(num_tokens, 6, dtype=torch.float64, generator=g)
        if i == 2:  # an eval forward balances over itself alone and leaves the window as it was
            router.eval()
            out = router(x_TD)
            fractions_E = torch.bincount(out.experts_TK.flatten(), minlength=num_routed) / (top_k * num_tokens)
            assert torch.allclose(out.lb_loss, num_routed * (fractions_E * out.logits_TE.softmax(-1).mean(0)).sum())
            router.train()
            continue
        out = router(x_TD)
        counts.append(torch.bincount(out.experts_TK.flatten(), minlength=num_routed).double())
        tokens.append(num_tokens)
        fractions_E = sum(counts[-window:]) / (top_k * sum(tokens[-window:]))
        expected = num_routed * (fractions_E * out.logits_TE.softmax(-1).mean(0)).sum()
        assert torch.allclose(out.lb_loss, expected)


@settings(max_examples=30, deadline=None)
@given(routing_cases())
def test_pool_gradients_equal_those_of_the_per_document_loop(case):
    num_routed, _, top_k, pool, _, _ = case
    router, doc_ids_BS, x_TD, out = _route_with_eval_pool(case)
    loss = (out.weights_TK * torch.arange(1.0, top_k + 1, dtype=torch.float64)).sum() + out.lb_loss + out.z_loss
    (grad,) = torch.autograd.grad(loss, router.gate.weight)

    # Reference: the loop's pools, logits set to -inf outside them, softmax, top-k, the same losses.
    logits_TE = x_TD @ router.gate.weight[:num_routed].T
    _, _, pools = _reference_route(logits_TE.detach(), doc_ids_BS, pool, top_k)
    outside_TE = torch.tensor([[e not in p for e in range(num_routed)] for p in pools])
    masked_TE = logits_TE.masked_fill(outside_TE, float("-inf"))
    probs_TE = masked_TE.softmax(-1)
    weights_TK = probs_TE.gather(1, out.experts_TK)
    counts_E = torch.bincount(out.experts_TK.flatten(), minlength=num_routed).double()
    lb = num_routed * (counts_E / (top_k * len(x_TD)) * probs_TE.mean(0)).sum()
    ref_loss = (weights_TK * torch.arange(1.0, top_k + 1, dtype=torch.float64)).sum() + lb
    ref_loss = ref_loss + masked_TE.logsumexp(-1).square().mean()
    (ref_grad,) = torch.autograd.grad(ref_loss, router.gate.weight)
    assert torch.allclose(grad, ref_grad)


def _pool_router_inputs(device="cpu"):
    """A training router with a random pool and an LB window, and 24 tokens in 5 documents over 2 rows."""
    router = _make_router(12, 1, 2, 0, pool="3..12", lb_window=4).float().to(device)
    doc_ids_BS = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]], device=device)
    return router, doc_ids_BS, torch.randn(24, 6).to(device), torch.tensor(7, device=device)


def test_pool_path_reads_nothing_back_to_the_host():
    # Meta tensors have shapes but no values: any .item(), .tolist(), int(tensor), nonzero or
    # other data-dependent step raises, as a host sync would stall an accelerator.
    router, doc_ids_BS, x_TD, seed = _pool_router_inputs("meta")
    segments = Segments.from_doc_ids(doc_ids_BS)  # off the CPU: the token count bounds the segments
    assert segments.num_segments == doc_ids_BS.numel()
    out = router(x_TD, segments, seed)
    assert out.experts_TK.shape == (24, 2) and out.lb_loss.shape == ()
    with pytest.raises((RuntimeError, NotImplementedError)):
        x_TD.sum().item()  # the check bites


def test_pool_path_compiles_to_one_graph():
    # fullgraph=True turns every graph break into an error (compiled blocks stay whole).
    torch._dynamo.reset()
    router, doc_ids_BS, x_TD, seed = _pool_router_inputs()
    segments = Segments(Segments.from_doc_ids(doc_ids_BS).seg_T, num_segments=doc_ids_BS.numel())
    compiled = torch.compile(router, fullgraph=True, backend="eager")
    eager, traced = router(x_TD, segments, seed), compiled(x_TD, segments, seed)
    assert torch.equal(eager.experts_TK, traced.experts_TK) and torch.allclose(eager.weights_TK, traced.weights_TK)
    with pytest.raises(torch._dynamo.exc.Unsupported):  # the check bites: a seeded CPU generator breaks graphs
        torch.compile(lambda t: t + torch.randn(6, generator=torch.Generator().manual_seed(1)), fullgraph=True,
                      backend="eager")(x_TD)


def _sliced_router(router, kept):
    """Reference: a router of the kept experts only (their gate rows, then the shared ones), as a
    sliced subset holds it."""
    num_shared = router.gate.weight.shape[0] - router.num_routed
    cfg = RouterConfig(num_shared_experts=num_shared, renormalize=router.renormalize,
                       bias_update_rate=router.bias_update_rate)
    sliced = Router(6, len(kept) + num_shared, router.top_k, cfg).double()
    rows = [*kept, *range(router.num_routed, router.num_routed + num_shared)]
    with torch.no_grad():
        sliced.gate.weight.copy_(router.gate.weight[rows])
        if router.bias_update_rate > 0:
            sliced.score_bias_E.copy_(router.score_bias_E[kept])
    return sliced.eval()


@pytest.mark.parametrize("kept", [[1, 4, 6], [2], [0, 1, 2, 3, 4, 5, 6]])
@pytest.mark.parametrize("options", [{}, {"renormalize": True}, {"bias_update_rate": 0.5}, {"eval_pool": "4"}])
def test_a_restricted_router_routes_as_the_router_of_the_kept_experts(kept, options):
    router = _make_router(7, 1, 3, 0, **options).eval()
    if "bias_update_rate" in options:
        with torch.no_grad():
            router.score_bias_E.copy_(torch.linspace(-0.3, 0.3, 7))
    x_TD = torch.randn(12, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    segments = Segments.from_doc_ids(torch.zeros(1, 12, dtype=torch.long))
    unrestricted = router(x_TD, segments)
    reference = _sliced_router(router, kept)(x_TD)
    router.restrict(kept)
    assert router.pool is None  # as a sliced subset, whatever the eval pool
    got = router(x_TD, segments)
    assert got.experts_TK.shape[1] == min(3, len(kept))
    assert torch.equal(got.experts_TK, torch.tensor(kept)[reference.experts_TK])
    assert torch.equal(got.weights_TK, reference.weights_TK)
    assert torch.equal(got.lb_loss, reference.lb_loss) and torch.equal(got.z_loss, reference.z_loss)
    assert torch.equal(got.logits_TE, x_TD @ router.gate.weight[:7].T)  # every routed expert's logits
    router.restrict(None)
    assert torch.equal(router(x_TD, segments).experts_TK, unrestricted.experts_TK)


def test_a_restriction_is_for_inference_and_names_existing_experts():
    router = _make_router(7, 1, 3, 0)
    for bad in ([], [3, 1], [2, 2], [7], [-1]):
        with pytest.raises(ValueError, match="ascending distinct ids in \\[0, 7\\)"):
            router.restrict(bad)
    router.restrict([1, 2])
    assert "kept_E" not in router.state_dict()  # never saved with the weights
    with pytest.raises(ValueError, match="inference only"):
        router.train()(torch.randn(3, 6, dtype=torch.float64))
