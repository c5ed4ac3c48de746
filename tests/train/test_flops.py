import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from emomoe.model import ModelConfig, build_model
from emomoe.model.losses import compute_loss
from emomoe.train.flops import mfu, train_flops_per_token


def test_weight_flops_match_torch_count_for_a_dense_model():
    # One always-on expert and no routed ones: every matmul is an mm/bmm that torch can count
    # (attention's SDPA kernel is not counted, so compare without the attention term).
    cfg = ModelConfig.preset("tiny").with_overrides(
        ["moe.num_experts=1", "moe.top_k=0", "moe.router.pool=off", "doc_attention_mask=false"]
    )
    batch, seq_len = 2, 16
    model = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    with FlopCounterMode(display=False) as counter:
        compute_loss(model(ids), ids, cfg.loss)["total"].backward()
    counted = counter.get_total_flops() / (batch * seq_len)
    attention = 6 * cfg.num_layers * seq_len * cfg.d_model
    assert train_flops_per_token(cfg, seq_len) - attention == pytest.approx(counted, rel=0.02)


def test_attention_term_grows_with_context():
    cfg = ModelConfig.preset("small")
    step = train_flops_per_token(cfg, 256) - train_flops_per_token(cfg, 128)
    assert step == 6 * cfg.num_layers * 128 * cfg.d_model


def test_inactive_experts_cost_nothing():
    cfg = ModelConfig.preset("small")
    more_experts = cfg.with_overrides(["moe.num_experts=64"])
    assert train_flops_per_token(more_experts, 128) - train_flops_per_token(cfg, 128) == pytest.approx(
        6 * cfg.num_layers * 32 * cfg.d_model, rel=1e-9  # only the router grows: 32 more gate rows
    )


def test_mfu_is_achieved_over_peak():
    assert mfu(1e6, 2e3, 4e9) == pytest.approx(0.5)
