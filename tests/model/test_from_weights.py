import pytest
import torch

from emomoe import ModelConfig, build_model
from emomoe.model.attention import rope_tables
from emomoe.model.from_weights import block_from_weights, fp32_compute, model_from_weights
from emomoe.model.transformer import document_inputs


@pytest.fixture(scope="module")
def model_and_ids():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").with_overrides(["eos_id=3", "moe.router.pool=off"])
    ids_BS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    ids_BS[:, 9] = 3
    return build_model(cfg).eval(), cfg, ids_BS


def test_a_bf16_model_under_fp32_compute_gives_the_fp32_logits_of_its_values_and_stays_bf16(model_and_ids):
    model, cfg, ids_BS = model_and_ids
    bf16 = {k: v.bfloat16() for k, v in model.state_dict().items()}
    reference = build_model(cfg).eval()
    reference.load_state_dict({k: v.float() for k, v in bf16.items()})
    stored = model_from_weights(cfg, bf16).eval()
    assert stored.rope_cos.dtype == torch.float32  # derived buffers are computed, not stored
    with torch.no_grad():
        expected = reference(ids_BS).logits
        with fp32_compute(stored):
            got = stored(ids_BS).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32
    assert {p.dtype for p in stored.parameters()} == {torch.bfloat16}
    assert all(p.data_ptr() == bf16[k].data_ptr() for k, p in stored.named_parameters())
    # Outside the block the model is plain bf16 again (and fails for want of bf16 x fp32 kernels).
    with pytest.raises(RuntimeError):
        stored(ids_BS)


def test_fp32_compute_restores_the_stored_weights_when_a_forward_fails(model_and_ids):
    model, cfg, ids_BS = model_and_ids
    stored = model_from_weights(cfg, {k: v.bfloat16() for k, v in model.state_dict().items()}).eval()
    with fp32_compute(stored), pytest.raises(ValueError, match="exceeds max_seq_len"):
        stored(torch.zeros(1, cfg.max_seq_len + 1, dtype=torch.long))
    with fp32_compute(stored):
        handle = stored.layers[1].register_forward_pre_hook(lambda *a: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            stored(ids_BS)
        handle.remove()
    assert {p.dtype for p in stored.parameters()} == {torch.bfloat16}


def test_fp32_compute_leaves_an_fp32_model_alone(model_and_ids):
    model, _, ids_BS = model_and_ids
    with torch.no_grad():
        expected = model(ids_BS).logits
        with fp32_compute(model):
            assert torch.equal(model(ids_BS).logits, expected)
    assert not model.layers[0]._forward_pre_hooks


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
