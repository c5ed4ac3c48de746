import torch

from emomoe.model.attention import Attention, apply_rope, rope_tables


def test_rope_turns_each_pair_of_halves_by_position_times_frequency_in_values_and_gradients():
    S, Dh, theta = 9, 8, 500.0
    cos, sin = rope_tables(S, Dh, theta)
    x = torch.randn(2, 3, S, Dh, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 3, S, Dh, dtype=torch.float64)
    # Reference: complex numbers x_j + i x_{j+Dh/2} times e^{i pos / theta^(2j/Dh)}.
    angle = torch.arange(S, dtype=torch.float64)[:, None] / theta ** (torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    turned = torch.complex(x[..., : Dh // 2], x[..., Dh // 2 :]) * torch.polar(torch.ones_like(angle), angle)
    expected = torch.cat([turned.real, turned.imag], dim=-1)
    got = apply_rope(x, cos.double(), sin.double())
    assert torch.allclose(got, expected, atol=1e-6)
    with torch.no_grad():  # the path without an autograd node
        assert torch.equal(apply_rope(x, cos.double(), sin.double()), got)
    (grad,) = torch.autograd.grad((got * upstream).sum(), x)
    (ref_grad,) = torch.autograd.grad((expected * upstream).sum(), x)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(32, 8, theta=10000.0)
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):
        qi = apply_rope(q.expand(32, 8), cos, sin)[i]
        kj = apply_rope(k.expand(32, 8), cos, sin)[j]
        return qi @ kj

    assert torch.allclose(score(5, 2), score(20, 17), atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)


def _attention(num_kv_heads=4, qk_norm=False):
    torch.manual_seed(0)
    return Attention(d_model=16, num_heads=4, num_kv_heads=num_kv_heads, qk_norm=qk_norm, norm_eps=1e-6)


def _naive_attention(attn, x_BSD, cos, sin, allowed_BSS):
    B, S, _ = x_BSD.shape
    hd, rep = attn.head_dim, attn.num_heads // attn.num_kv_heads
    q, k, v = attn.q_proj(x_BSD), attn.k_proj(x_BSD), attn.v_proj(x_BSD)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    heads = []
    for h in range(attn.num_heads):
        qh = apply_rope(q[..., h * hd : (h + 1) * hd], cos, sin)
        kv = h // rep
        kh = apply_rope(k[..., kv * hd : (kv + 1) * hd], cos, sin)
        scores = (qh @ kh.transpose(1, 2)) / hd**0.5
        scores = scores.masked_fill(~allowed_BSS, float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., kv * hd : (kv + 1) * hd])
    return attn.o_proj(torch.cat(heads, dim=-1))


def test_attention_equals_a_naive_per_head_computation_with_gqa_qk_norm_and_doc_mask():
    x_BSD = torch.randn(2, 6, 16)
    cos, sin = rope_tables(6, 4, theta=5e5)
    same_doc_BSS = torch.tensor([0, 0, 1, 1, 1, 2]).view(1, 6, 1) == torch.tensor([0, 0, 1, 1, 1, 2]).view(1, 1, 6)
    allowed_BSS = (same_doc_BSS & torch.ones(6, 6, dtype=torch.bool).tril()).expand(2, 6, 6)
    for attn in (_attention(), _attention(num_kv_heads=2, qk_norm=True)):
        causal = attn(x_BSD, cos, sin, None)
        causal_SS = torch.ones(6, 6, dtype=torch.bool).tril()
        assert torch.allclose(causal, _naive_attention(attn, x_BSD, cos, sin, causal_SS), atol=1e-5)
        masked = attn(x_BSD, cos, sin, allowed_BSS[:, None])
        assert torch.allclose(masked, _naive_attention(attn, x_BSD, cos, sin, allowed_BSS), atol=1e-5)
