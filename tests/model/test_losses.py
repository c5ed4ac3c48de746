import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.model.config import LBScope, LossConfig, RouterConfig
from emomoe.model.docs import Segments
from emomoe.model.losses import (
    IGNORE_INDEX,
    compute_loss,
    cross_entropy_and_logit_z,
    lm_head_loss,
    load_balancing_loss,
    router_z_loss,
)
from emomoe.model.router import Router
from emomoe.model.transformer import ModelOutput


def _switch_reference(probs_TE, experts_TK):
    """Switch LB written out with Python counting: E * sum_i (share of slots on i) * (mean prob of i)."""
    T, E = probs_TE.shape
    slots = experts_TK.flatten().tolist()
    return E * sum(slots.count(i) / len(slots) * probs_TE[:, i].mean() for i in range(E))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 8), st.data())
def test_load_balancing_loss_equals_the_switch_formula(num_tokens, num_experts, data):
    top_k = data.draw(st.integers(1, num_experts))
    probs_TE = torch.randn(num_tokens, num_experts, dtype=torch.float64).softmax(-1)
    experts_TK = probs_TE.topk(top_k, -1).indices
    counts_E = torch.bincount(experts_TK.flatten(), minlength=num_experts)
    got = load_balancing_loss(probs_TE, counts_E, num_tokens, top_k)
    assert torch.allclose(got, torch.as_tensor(_switch_reference(probs_TE, experts_TK), dtype=torch.float64))


def test_load_balancing_loss_is_one_at_perfect_balance():
    num_experts, top_k, num_tokens = 8, 2, 12
    counts_E = torch.full((num_experts,), num_tokens * top_k / num_experts)
    skewed_TE = torch.randn(num_tokens, num_experts).softmax(-1)
    assert torch.allclose(load_balancing_loss(skewed_TE, counts_E, num_tokens, top_k), torch.tensor(1.0))
    uniform_TE = torch.full((num_tokens, num_experts), 1 / num_experts)
    collapsed_E = torch.zeros(num_experts).index_fill_(0, torch.tensor([0]), num_tokens * top_k)
    assert torch.allclose(load_balancing_loss(uniform_TE, collapsed_E, num_tokens, top_k), torch.tensor(1.0))
    peaked_TE = torch.zeros(num_tokens, num_experts).index_fill_(1, torch.tensor([0]), 1.0)
    assert load_balancing_loss(peaked_TE, collapsed_E, num_tokens, top_k) == num_experts


def test_load_balancing_gradient_flows_through_probabilities_only():
    probs_TE = torch.randn(5, 4).softmax(-1).requires_grad_()
    counts_E = torch.tensor([3.0, 1.0, 4.0, 2.0], requires_grad=True)
    load_balancing_loss(probs_TE, counts_E, 5, 2).backward()
    assert probs_TE.grad is not None and counts_E.grad is None


def test_router_z_loss_is_the_mean_squared_logsumexp():
    logits_TE = torch.randn(6, 5)
    expected = sum(torch.logsumexp(row, 0) ** 2 for row in logits_TE) / 6
    assert torch.allclose(router_z_loss(logits_TE.logsumexp(-1)), expected)


def test_cross_entropy_and_logit_z_ignore_masked_labels():
    logits_BSV = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    labels_BS = torch.randint(0, 7, (2, 4))
    labels_BS[1, 2:] = -100
    ce, z = cross_entropy_and_logit_z(logits_BSV, labels_BS)
    flat, valid = logits_BSV.reshape(-1, 7), labels_BS.reshape(-1) != -100
    assert torch.allclose(ce, F.cross_entropy(flat, labels_BS.reshape(-1), ignore_index=-100))
    assert torch.allclose(z, flat[valid].logsumexp(-1).square().mean())
    assert torch.autograd.gradcheck(lambda x: sum(cross_entropy_and_logit_z(x, labels_BS)), (logits_BSV,))


def test_cross_entropy_of_bf16_logits_is_computed_in_float32():
    g = torch.Generator().manual_seed(0)
    logits_BSV = (3 * torch.randn(2, 8, 32768, generator=g)).bfloat16()
    labels_BS = torch.randint(0, 32768, (2, 8), generator=g)
    ce, z = cross_entropy_and_logit_z(logits_BSV, labels_BS)
    assert ce.dtype == z.dtype == torch.float32
    # The float64 values of the same bf16 logits, to float32 precision (bf16 arithmetic is off by ~1e-2).
    flat = logits_BSV.double().reshape(-1, 32768)
    assert float(ce) == pytest.approx(float(F.cross_entropy(flat, labels_BS.reshape(-1))), rel=1e-6)
    assert float(z) == pytest.approx(float(flat.logsumexp(-1).square().mean()), rel=1e-6)


def test_compute_loss_applies_the_weights():
    logits_BSV = torch.randn(1, 3, 5)
    labels_BS = torch.tensor([[1, -100, 4]])
    out = ModelOutput(logits_BSV, lb_loss=torch.tensor(2.0), router_z_loss=torch.tensor(3.0))
    cfg = LossConfig(lb_weight=0.5, router_z_weight=0.25, logit_z_weight=0.125)
    losses = compute_loss(out, labels_BS, cfg)
    assert set(losses) == {"ce", "lb", "router_z", "logit_z", "total"}
    expected = losses["ce"] + 0.5 * 2.0 + 0.25 * 3.0 + 0.125 * losses["logit_z"]
    assert torch.allclose(losses["total"], expected)
    assert LossConfig() == LossConfig(lb_weight=0.1, router_z_weight=0.001, logit_z_weight=1e-5)


# --- global LB over two gloo processes ---------------------------------------------------------

NUM_ROUTED, SEQ = 6, 10


def _router(scope):
    torch.manual_seed(0)
    return Router(8, NUM_ROUTED + 1, 2, RouterConfig(pool="3", lb_scope=scope)).double()


def _batch():
    g = torch.Generator().manual_seed(1)
    x_TD = torch.randn(2 * SEQ, 8, dtype=torch.float64, generator=g)
    doc_ids_BS = (torch.rand(2, SEQ, generator=g) < 0.3).long().cumsum(1)
    return x_TD, doc_ids_BS


def _lb_and_grad(router, x_TD, doc_ids_BS):
    router.gate.weight.grad = None
    out = router(x_TD, Segments.from_doc_ids(doc_ids_BS))
    out.lb_loss.backward()
    return out.lb_loss.detach(), router.gate.weight.grad.clone()


def _global_lb_worker(rank: int, init_file: str, result_dir: str) -> None:
    """One data-parallel rank holding one row of the batch; run as a script by the test below."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x_TD, doc_ids_BS = _batch()
        rows = slice(rank * SEQ, (rank + 1) * SEQ)
        lb, grad = _lb_and_grad(_router(LBScope.GLOBAL), x_TD[rows], doc_ids_BS[rank : rank + 1])
        torch.save({"lb": lb, "grad": grad}, f"{result_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_lb_over_two_processes_equals_one_process_with_both_halves(tmp_path):
    # Separate interpreters running this file, so the workers need no importable test package.
    workers = [
        subprocess.Popen([sys.executable, __file__, str(rank), str(tmp_path / "init"), str(tmp_path)])
        for rank in range(2)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    x_TD, doc_ids_BS = _batch()
    full_lb, full_grad = _lb_and_grad(_router(LBScope.GLOBAL), x_TD, doc_ids_BS)
    # Data-parallel training averages the ranks' losses and gradients.
    assert torch.allclose((ranks[0]["lb"] + ranks[1]["lb"]) / 2, full_lb)
    assert torch.allclose((ranks[0]["grad"] + ranks[1]["grad"]) / 2, full_grad)
    # The local scope is different, so the test can tell the two apart.
    local = [
        _lb_and_grad(_router(LBScope.LOCAL), x_TD[r * SEQ : (r + 1) * SEQ], doc_ids_BS[r : r + 1])[0] for r in range(2)
    ]
    assert not torch.allclose((local[0] + local[1]) / 2, full_lb)


if __name__ == "__main__":
    _global_lb_worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])


# float64 runs the PyTorch ops, float32 the fused kernel (emomoe.kernels), with a vocabulary that
# is not a multiple of the vector width.
@pytest.mark.parametrize(("dtype", "vocab"), [(torch.float64, 40000), (torch.float32, 40003)])
@pytest.mark.parametrize("num_tokens", [5, 64 * 3 + 7])  # one chunk; several, the last one short
def test_fused_lm_head_loss_equals_logits_then_cross_entropy(num_tokens, dtype, vocab):
    g = torch.Generator().manual_seed(0)
    hidden_BSD = torch.randn(1, num_tokens, 6, dtype=torch.float64, generator=g).to(dtype).requires_grad_()
    weight_VD = torch.randn(vocab, 6, dtype=torch.float64, generator=g).to(dtype).requires_grad_()  # chunks of 64
    labels_BS = torch.randint(0, vocab, (1, num_tokens), generator=g)
    labels_BS[0, 1::3] = IGNORE_INDEX
    fused = lm_head_loss(hidden_BSD, weight_VD, labels_BS, logit_z_weight=0.3)
    fused_grads = torch.autograd.grad(2.0 * fused.total, (hidden_BSD, weight_VD))
    # The reference in float64 from the same values, through the logits.
    hidden64, weight64 = (t.detach().double().requires_grad_() for t in (hidden_BSD, weight_VD))
    logits64 = hidden64 @ weight64.T
    ce, z = cross_entropy_and_logit_z(logits64, labels_BS)
    *ref_grads, logits_grad64 = torch.autograd.grad(2.0 * (ce + 0.3 * z), (hidden64, weight64, logits64))
    tol = {"rtol": 1e-5, "atol": 1e-12 if dtype == torch.float64 else 1e-6}
    assert torch.allclose(fused.ce.double(), ce, **tol) and torch.allclose(fused.logit_z.double(), z, **tol)
    assert torch.allclose(fused.total.double(), ce + 0.3 * z, **tol)
    # Each gradient is a sum G @ X of K products in `dtype` (G: the logits' gradient; K = V for the
    # hidden state, T for the weight), off by up to (c + lambda sqrt(K)) u (|G| @ |X|):
    # - c u |G|: an element of G is off by u times |logit - max| (below 20 here) and the logits' own
    #   rounding (6 products): c = 32, measured at most 27 in the weight gradient (K = 5);
    # - lambda sqrt(K) u: a K-term sum whose roundings have random signs (the probabilistic bound of
    #   Higham and Mary, 2019; the worst case, K u, is not approached). Measured on the hidden
    #   gradient: 0.05 sqrt(V) u with MKL's AVX2 and AVX-512 code, 4.5 with its generic code, which
    #   AMD CPUs run (MKL_CBWR=COMPATIBLE here; an EPYC failed the former rtol of 1e-5): lambda = 8.
    u = torch.finfo(dtype).eps / 2
    abs_grad_TV = logits_grad64.abs().reshape(num_tokens, vocab)
    bounds = (
        (abs_grad_TV @ weight64.detach().abs()).reshape(hidden_BSD.shape) * (32 + 8 * vocab**0.5) * u,
        (abs_grad_TV.T @ hidden64.detach().abs().reshape(num_tokens, -1)) * (32 + 8 * num_tokens**0.5) * u,
    )
    for a, b, bound in zip(fused_grads, ref_grads, bounds):
        assert ((a.double() - b).abs() <= bound).all(), float(((a.double() - b).abs() / bound).nan_to_num().max())


def test_model_with_labels_gives_the_losses_of_its_logits():
    from emomoe import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny")
    model = build_model(cfg)
    ids_BS = torch.randint(0, cfg.vocab_size, (2, 17))
    fused = compute_loss(model(ids_BS[:, :-1], labels_BS=ids_BS[:, 1:]), ids_BS[:, 1:], cfg.loss)
    fused["total"].backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # The same pool draws: the sampler's forward counter goes back.
    model.pool_sampler.num_forwards -= 1
    plain = compute_loss(model(ids_BS[:, :-1]), ids_BS[:, 1:], cfg.loss)
    plain["total"].backward()
    for key in plain:
        assert torch.allclose(fused[key], plain[key], atol=1e-6)
    for a, p in zip(fused_grads, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    with pytest.raises(ValueError, match="logit_z_weight"):
        compute_loss(model(ids_BS[:, :-1], labels_BS=ids_BS[:, 1:]), ids_BS[:, 1:], LossConfig(logit_z_weight=0.5))


@pytest.mark.parametrize("grad", [False, True])
def test_the_fused_lm_head_loss_computes_gradients_only_with_autograd_on(grad, monkeypatch):
    torch.manual_seed(0)
    hidden_BSD, weight_VD = torch.randn(2, 40, 8), torch.nn.Parameter(torch.randn(50, 8))
    labels_BS = torch.randint(0, 50, (2, 40))
    products = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: products.append(1) or real_mm(*a, **k))
    with torch.set_grad_enabled(grad):
        loss = lm_head_loss(hidden_BSD, weight_VD, labels_BS, 0.0)
    expected = F.cross_entropy((hidden_BSD @ weight_VD.T).reshape(-1, 50), labels_BS.reshape(-1))
    torch.testing.assert_close(loss.ce, expected.detach())
    # One chunk of 80 rows: the logits' product, and with autograd the two that make the gradients.
    assert len(products) == (3 if grad else 1)
