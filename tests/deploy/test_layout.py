"""The `deepseek` layout: what it refuses, the RoPE row order, and (against an independent numpy
reference of llama.cpp's deepseek graph) that a file written with it computes our logits."""

import numpy as np
import pytest
import torch

from emomoe.checkpoint import load_for_inference
from emomoe.deploy.gguf import export_gguf
from emomoe.deploy.layout import _rope_rows, check_expressible
from emomoe.errors import ConfigError
from emomoe.model import ModelConfig
from emomoe.model.attention import apply_rope, rope_tables
from tests.deploy.deepseek_reference import DeepseekFile, _rope_adjacent_pairs


@pytest.mark.parametrize("override, field", [
    ("qk_norm=true", "qk_norm"),
    ("moe.router.num_shared_experts=0", "moe.router.num_shared_experts"),
    ("moe.router.renormalize=true", "moe.router.renormalize"),
    ("moe.router.bias_update_rate=0.001", "moe.router.bias_update_rate"),
    ("moe.num_experts_per_layer=[4,5]", "moe.num_experts_per_layer"),
])
def test_what_llama_cpp_cannot_run_is_refused_naming_the_field(override, field):
    cfg = ModelConfig.preset("tiny").with_overrides([override])
    with pytest.raises(ConfigError, match=rf"^{field}: .* cannot be exported to GGUF: llama.cpp"):
        check_expressible(cfg)


def test_the_presets_that_have_shared_experts_are_expressible():
    for name in ("tiny", "small", "emo-1b14b", "std-1b14b"):
        check_expressible(ModelConfig.preset(name))


def test_interleaved_rows_make_adjacent_pair_rope_equal_rotate_half_rope():
    torch.manual_seed(0)
    heads, head_dim, d_model, seq = 3, 8, 5, 7
    w_ND = torch.randn(heads * head_dim, d_model, dtype=torch.float64)
    x_SD = torch.randn(seq, d_model, dtype=torch.float64)
    cos, sin = rope_tables(seq, head_dim, 10000.0)
    ours_HSDh = apply_rope((x_SD @ w_ND.T).view(seq, heads, head_dim).transpose(0, 1), cos.double(), sin.double())
    theirs_SHDh = _rope_adjacent_pairs((x_SD @ _rope_rows(heads)(w_ND).T).view(seq, heads, head_dim).numpy(), 10000.0)
    # The same vectors up to the order of each head's features, so the same attention scores.
    ours_SHDh = ours_HSDh.transpose(0, 1)
    order = torch.arange(head_dim).view(2, -1).T.flatten()  # (j, j + Dh/2) -> (2j, 2j + 1)
    np.testing.assert_allclose(theirs_SHDh, ours_SHDh[..., order].numpy(), atol=1e-6)  # float32 tables


@pytest.mark.slow
@pytest.mark.parametrize("which", ["trained", "subset"])
def test_the_reference_deepseek_graph_on_our_f32_file_gives_our_logits(request, which, tmp_path):
    checkpoint = request.getfixturevalue(which)
    path = export_gguf(checkpoint, tmp_path / "m.gguf", type="f32")
    model, _ = load_for_inference(checkpoint)
    ids = list(range(3, 67))
    with torch.no_grad():
        ours_SV = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(DeepseekFile(path).logits(ids) - ours_SV).max() < 1e-4
