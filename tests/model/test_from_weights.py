import contextlib

import pytest
import torch

from emomoe import ModelConfig, build_model, kernels
from emomoe.model.attention import rope_tables
from emomoe.model.from_weights import block_from_weights, model_from_weights
from emomoe.model.transformer import document_inputs


@pytest.fixture(scope="module")
def model_and_ids():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").with_overrides(["eos_id=3", "moe.router.pool=off"])
    ids_BS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    ids_BS[:, 9] = 3
    return build_model(cfg).eval(), cfg, ids_BS


@pytest.mark.parametrize("fused", [True, False], ids=["kernels", "pytorch"])
def test_a_model_holding_bf16_weights_gives_the_fp32_logits_of_their_values_and_stays_bf16(model_and_ids, fused):
    """Prefill (the whole sequence) and decoding (then one token at a time) against a reference
    whose weights were upcast once. Both compute the same fp32 products of the same values and
    differ only in the order of the sums (the kernel's vector lanes against BLAS): float32
    rounding, ~1e-7 relative per sum, grown by the layers to well below 1e-5."""
    model, cfg, ids_BS = model_and_ids
    bf16 = {k: v.bfloat16() for k, v in model.state_dict().items()}
    reference = build_model(cfg).eval()
    reference.load_state_dict({k: v.float() for k, v in bf16.items()})
    stored = model_from_weights(cfg, bf16).eval()
    assert stored.rope_cos.dtype == torch.float32  # derived buffers are computed, not stored
    with torch.no_grad(), contextlib.nullcontext() if fused else kernels.disabled():
        expected = reference(ids_BS).logits
        got = stored(ids_BS).logits
        cache = stored.new_cache(2, 24)
        steps = [stored.decode(ids_BS[:, :20], cache), *(stored.decode(ids_BS[:, i : i + 1], cache) for i in range(20, 24))]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32
    assert all(p.data_ptr() == bf16[k].data_ptr() for k, p in stored.named_parameters())


def test_a_block_from_given_weights_computes_what_the_models_block_computes(model_and_ids):
    model, cfg, ids_BS = model_and_ids
    bf16 = {k: v.bfloat16() for k, v in model.state_dict().items()}
    reference = build_model(cfg).eval()
    reference.load_state_dict({k: v.float() for k, v in bf16.items()})
    seen = {}
    reference.layers[1].register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out[0]))
    block_bf16 = {k.removeprefix("layers.1."): v for k, v in bf16.items() if k.startswith("layers.1.")}
    block = block_from_weights(cfg, 1, block_bf16)
    assert {p.dtype for p in block.parameters()} == {torch.float32} and not block.training
    segments, mask_B1SS = document_inputs(cfg, ids_BS, None)
    cos_SDh, sin_SDh = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
    with torch.no_grad():
        reference(ids_BS)
        y_BSD, _ = block(seen["x"], cos_SDh[:24], sin_SDh[:24], mask_B1SS, segments, None)
    assert torch.equal(y_BSD, seen["y"])
