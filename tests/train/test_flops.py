import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from emomoe.model import ModelConfig, build_model
from emomoe.model.losses import compute_loss
from emomoe.train.flops import (
    gemm_flops,
    matmul_flops_per_s,
    measure_peak_flops,
    mfu,
    model_gemm_shapes,
    train_flops_per_token,
)


def _counted_train_flops_per_token(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    """torch's own count of a forward + backward. float64 makes the experts run one mm per expert
    (the grouped kernel is invisible to the counter) and the math attention backend runs bmm's."""
    torch.manual_seed(0)
    model = build_model(cfg).double()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        compute_loss(model(ids), ids, cfg.loss)["total"].backward()
    return counter.get_total_flops() / (batch * seq_len)


def test_weight_flops_match_torch_count_for_a_dense_model():
    # One always-on expert and no routed ones: every matmul is an mm/bmm that torch can count.
    cfg = ModelConfig.preset("tiny").with_overrides(
        ["moe.num_experts=1", "moe.top_k=0", "moe.router.pool=off", "doc_attention_mask=false"]
    )
    seq_len = 16
    counted = _counted_train_flops_per_token(cfg, 2, seq_len)
    attention = 6 * cfg.num_layers * seq_len * cfg.d_model
    # The math backend computes the full (not causal) score matrix: twice the causal count.
    assert train_flops_per_token(cfg, seq_len) + attention == pytest.approx(counted, rel=0.02)


@pytest.mark.parametrize("shared", [0, 1])
def test_moe_flops_count_top_k_experts_the_whole_gate_and_attention(shared):
    cfg = ModelConfig.preset("tiny").with_overrides(
        ["d_model=64", "moe.num_experts=9", "moe.top_k=3", "moe.expert_hidden_size=48", "moe.router.pool=off",
         f"moe.router.num_shared_experts={shared}", "doc_attention_mask=false"]
    )
    seq_len = 32
    counted = _counted_train_flops_per_token(cfg, 2, seq_len)
    d, hidden, layers = cfg.d_model, 48, cfg.num_layers
    # Written out: q, k, v, o; the gate over all 9 experts; top-3 routed + shared SwiGLU experts; LM head.
    weights = layers * (4 * d * d + 9 * d + (3 + shared) * 3 * d * hidden) + cfg.vocab_size * d
    attention_full = 2 * 6 * layers * seq_len * d
    assert counted == pytest.approx(6 * weights + attention_full, rel=0.01)
    assert train_flops_per_token(cfg, seq_len) == pytest.approx(6 * weights + attention_full / 2, rel=0.01)


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


def test_measured_peak_is_the_best_matmul_rate_and_plausible():
    torch.manual_seed(0)
    peak = measure_peak_flops(seconds=0.2)
    # One core of anything that runs this suite does more than 1 GFLOP/s and less than 10 TFLOP/s.
    assert 1e9 < peak < 1e13
    # A matmul far too small to reach the BLAS peak is slower per FLOP than the peak.
    assert matmul_flops_per_s(8, 8, 8, seconds=0.05) < peak


def test_a_bf16_peak_without_bf16_units_is_quick_and_never_below_float32():
    """oneDNN limited to AVX2 runs bf16 matmuls as a CPU without bf16 units does: emulated, about
    100x slower than float32 (measuring them as before took minutes, and MFU read above 1)."""
    code = (
        "import time, torch; from emomoe.train.flops import measure_peak_flops; torch.set_num_threads(1); "
        "t = time.perf_counter(); bf16 = measure_peak_flops(dtype=torch.bfloat16); s = time.perf_counter() - t; "
        "print(bf16, measure_peak_flops(), s)"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    bf16, fp32, seconds = map(float, out.split())
    assert seconds < 3
    assert bf16 > 0.5 * fp32  # at least the float32 peak, up to timing noise


def test_model_gemm_shapes_of_the_small_preset():
    cfg = ModelConfig.preset("small")
    shapes = model_gemm_shapes(cfg, 4096)
    assert shapes["lm_head"] == (4096, 128, 8192)
    assert shapes["expert_up"] == (4096 * 3 // 31, 128, 192) and shapes["expert_down"] == (4096 * 3 // 31, 192, 128)
    assert gemm_flops(*shapes["lm_head"]) == 2 * 4096 * 128 * 8192
