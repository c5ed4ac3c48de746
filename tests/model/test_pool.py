import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe import kernels
from emomoe.model.docs import Segments
from emomoe.model.pool import PoolSampler, document_pools, draw_pool_sizes, pooled_softmax, seed_tensors


@st.composite
def pooled_batches(draw):
    num_experts = draw(st.integers(1, 9))
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    sizes = draw(st.lists(st.integers(1, num_experts + 2), min_size=len(lengths), max_size=len(lengths)))
    seed = draw(st.integers(0, 2**16))
    return num_experts, lengths, sizes, seed


def _loop_keep(probs_TE, lengths, sizes):
    """One document at a time: rank experts by summed probability, keep the top d."""
    keep, start = [], 0
    for length, d in zip(lengths, sizes):
        sums = probs_TE[start : start + length].sum(0)
        ranked = sorted(range(len(sums)), key=lambda e: -sums[e].item())
        keep += [[e in ranked[:d] for e in range(len(sums))]] * length
        start += length
    return keep


@settings(max_examples=60, deadline=None)
@given(pooled_batches())
def test_pools_equal_a_per_document_loop(batch):
    num_experts, lengths, sizes, seed = batch
    g = torch.Generator().manual_seed(seed)
    probs_TE = torch.randn(sum(lengths), num_experts, generator=g, dtype=torch.float64).softmax(-1)
    seg_T = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    keep_GE = document_pools(probs_TE, seg_T, len(lengths), torch.tensor(sizes))
    keep_TE = keep_GE[seg_T]
    assert keep_TE.tolist() == _loop_keep(probs_TE, lengths, sizes)
    assert keep_TE.sum(-1).tolist() == [min(d, num_experts) for d, n in zip(sizes, lengths) for _ in range(n)]


def test_ties_go_to_the_lower_expert_index():
    probs_TE = torch.tensor([[0.1, 0.3, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25]])
    keep_GE = document_pools(probs_TE, torch.tensor([0, 1]), 2, torch.tensor([2, 3]))
    assert keep_GE.tolist() == [[False, True, True, False], [True, True, True, False]]


# float32 runs the fused CPU kernel (emomoe.kernels), float64 the PyTorch ops.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=40, deadline=None)
@given(batch=pooled_batches())
def test_pooled_softmax_and_its_gradient_equal_the_softmax_of_masked_logits(dtype, batch):
    num_experts, lengths, sizes, seed = batch
    g = torch.Generator().manual_seed(seed)
    logits_TE = (3 * torch.randn(sum(lengths), num_experts, generator=g, dtype=torch.float64)).to(dtype)
    logits_TE.requires_grad_()
    upstream_TE = torch.randn(logits_TE.shape, generator=g, dtype=torch.float64).to(dtype)
    seg_T = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pooled_TE, keep_GE = pooled_softmax(logits_TE, seg_T, len(lengths), torch.tensor(sizes))
    keep_TE = keep_GE[seg_T]
    assert keep_TE.tolist() == _loop_keep(logits_TE.detach().double().softmax(-1), lengths, sizes)
    (grad,) = torch.autograd.grad((pooled_TE * upstream_TE).sum(), logits_TE)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    # Reference: every token on its own, its pool's logits only, softmax, gradient by autograd.
    for t in range(len(seg_T)):
        inside = keep_TE[t].nonzero().flatten()
        row = logits_TE[t, inside].detach().double().requires_grad_()
        probs = row.softmax(-1)
        (row_grad,) = torch.autograd.grad((probs * upstream_TE[t, inside].double()).sum(), row)
        assert torch.allclose(pooled_TE[t, inside].double(), probs, rtol=0, atol=atol)
        assert not pooled_TE[t][~keep_TE[t]].any() and not grad[t][~keep_TE[t]].any()
        assert torch.allclose(grad[t, inside].double(), row_grad, rtol=0, atol=1e-6 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_pool_whose_probabilities_underflow_gets_zero_weights_not_nan(dtype):
    # One document: token 0 prefers expert 0 overwhelmingly, but tokens 1-3 put more mass on
    # experts 1 and 2, so the pool of two drops expert 0, and token 0's pool probabilities (e^-1000)
    # underflow in float64 as in float32.
    logits_TE = torch.tensor(
        [[1000.0, 0.0, 1.0], [0.0, 300.0, 0.0], [0.0, 0.0, 300.0], [0.0, 300.0, 300.0]], dtype=dtype, requires_grad=True
    )
    pooled_TE, keep_GE = pooled_softmax(logits_TE, torch.tensor([0, 0, 0, 0]), 1, torch.tensor([2]))
    assert keep_GE.tolist() == [[False, True, True]]
    assert pooled_TE[0].tolist() == [0.0, 0.0, 0.0]
    (grad,) = torch.autograd.grad(pooled_TE[:, 2].sum(), logits_TE)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_the_fused_kernel_equals_the_pytorch_ops_on_many_documents(threads, kernel_ops):
    """Documents of very different lengths: the kernel splits the tokens into chunks, and a document
    longer than a chunk (the first 3000 tokens of row 0) is summed over several before its pool is
    ranked; the rest are single rows, 100-token documents, and 2-token ones."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    starts_BS = torch.rand(3, 4096, generator=g) < torch.tensor([0.01, 0.5, 0.0])[:, None]
    starts_BS[0, :3000] = False
    doc_ids_BS = starts_BS.long().cumsum(1)
    segments = Segments.from_doc_ids(doc_ids_BS)
    logits_TE = 2 * torch.randn(3 * 4096, 61, generator=g)
    sizes_G = draw_pool_sizes(4, 40, segments.num_segments, 7, logits_TE.device)
    fused = pooled_softmax(logits_TE, segments.seg_T, segments.num_segments, sizes_G)
    with kernels.disabled():
        twin = pooled_softmax(logits_TE, segments.seg_T, segments.num_segments, sizes_G)
    assert torch.equal(fused[1], twin[1])
    torch.testing.assert_close(fused[0], twin[0], rtol=0, atol=1e-6)


def test_segment_ids_out_of_order_are_refused(kernel_ops):
    with pytest.raises(RuntimeError, match="non-decreasing"):
        pooled_softmax(torch.randn(4, 5), torch.tensor([0, 1, 0, 1]), 2, torch.tensor([2, 2]))


def test_pools_are_unchanged_by_an_oversized_segment_count():
    probs_TE = torch.rand(6, 5).softmax(-1)
    seg_T = torch.tensor([0, 0, 1, 1, 1, 2])
    sizes = torch.tensor([2, 3, 1, 4, 4, 4])
    exact = document_pools(probs_TE, seg_T, 3, sizes[:3])
    assert torch.equal(exact, document_pools(probs_TE, seg_T, 6, sizes)[:3])


def test_sampler_layer_seeds_depend_only_on_seed_forward_and_layer():
    a, b = PoolSampler(seed=3), PoolSampler(seed=3)
    assert a.layer_seed(5, 1) == b.layer_seed(5, 1) == a.layer_seed(5, 1)
    assert len({a.layer_seed(5, 1), a.layer_seed(5, 2), a.layer_seed(6, 1), PoolSampler(seed=4).layer_seed(5, 1)}) == 4


def test_sampler_state_resumes_the_forward_counter():
    sampler = PoolSampler(seed=7)
    for _ in range(3):
        sampler.next_forward()
    resumed = PoolSampler()
    resumed.load_state_dict(sampler.state_dict())
    assert resumed.next_forward() == sampler.next_forward() == 3
    assert resumed.seed == 7


@pytest.mark.parametrize("seed", [0, 2**62 + 12345])
def test_pool_sizes_are_uniform_in_range_and_prefix_stable(seed):
    sizes = draw_pool_sizes(8, 128, 24200, seed, torch.device("cpu"))
    assert sizes.min() == 8 and sizes.max() == 128
    # Each of the 121 sizes is drawn about 200 times: a chi-square test of uniformity (df 120;
    # 180 is beyond its 99.9th percentile).
    counts = torch.bincount(sizes - 8, minlength=121).double()
    assert ((counts - 200) ** 2 / 200).sum() < 180
    fewer = draw_pool_sizes(8, 128, 5, seed, torch.device("cpu"))
    assert torch.equal(fewer, sizes[:5])


def test_pool_sizes_of_different_seeds_are_independent():
    a, b = (draw_pool_sizes(1, 2, 10000, seed, torch.device("cpu")) for seed in (1, 2))
    assert abs((a == b).double().mean().item() - 0.5) < 0.03
    assert torch.equal(a, draw_pool_sizes(1, 2, 10000, torch.tensor(1), torch.device("cpu")))


def test_layer_seeds_become_tensors():
    seeds = seed_tensors([3, 2**62], torch.device("cpu"))
    assert [s.item() for s in seeds] == [3, 2**62] and all(s.dtype == torch.int64 and s.dim() == 0 for s in seeds)


def test_each_data_parallel_rank_draws_its_own_sizes(monkeypatch):
    sampler = PoolSampler(seed=3)
    on_rank_0 = sampler.layer_seed(0, 0)
    monkeypatch.setattr("emomoe.distributed.get_rank", lambda: 1)
    assert sampler.layer_seed(0, 0) != on_rank_0
