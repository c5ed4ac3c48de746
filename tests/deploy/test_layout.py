"""The `deepseek` layout: what it refuses, the RoPE row order, and (against an independent numpy
reference of llama.cpp's deepseek graph) that a file written with it computes our logits."""

import numpy as np
import pytest
import torch

from emomoe.checkpoint import load_for_inference, save_model
from emomoe.data.store import TokenStore
from emomoe.deploy.gguf import export_gguf
from emomoe.deploy.layout import DEEPSEEK, LLAMA, OLMOE, _rope_rows, architecture
from emomoe.errors import ConfigError
from emomoe.model import ModelConfig, build_model
from emomoe.model.attention import apply_rope, rope_tables
from tests.deploy.llama_cpp_reference import GGUFModel, _rope_adjacent_pairs


@pytest.mark.parametrize("overrides, arch", [
    ([], DEEPSEEK),  # EMO and our standard MoE
    (["qk_norm=true", "moe.router.num_shared_experts=0"], OLMOE),  # an imported OLMoE
    (["moe.router.renormalize=true", "moe.router.num_shared_experts=0"], LLAMA),  # an imported Mixtral
])
def test_each_kind_of_model_gets_the_architecture_that_computes_it(overrides, arch):
    assert architecture(ModelConfig.preset("tiny").with_overrides(overrides)) == arch
    assert architecture(ModelConfig.preset("emo-1b14b")) == DEEPSEEK


@pytest.mark.parametrize("overrides, field", [
    (["qk_norm=true"], "qk_norm"),
    (["moe.router.num_shared_experts=0"], "moe.router.num_shared_experts"),
    (["moe.router.renormalize=true"], "moe.router.renormalize"),
    (["moe.router.bias_update_rate=0.001"], "moe.router.bias_update_rate"),
    (["moe.num_experts_per_layer=[4,5]"], "moe.num_experts_per_layer"),
    (["qk_norm=true", "moe.router.num_shared_experts=0", "num_kv_heads=2"], "num_kv_heads"),
])
def test_what_llama_cpp_cannot_run_is_refused_naming_the_field(overrides, field):
    cfg = ModelConfig.preset("tiny").with_overrides(overrides)
    with pytest.raises(ConfigError, match=rf"^{field}: .* cannot be exported to GGUF: .*llama.cpp"):
        architecture(cfg)


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
    assert np.abs(GGUFModel(path).logits(ids) - ours_SV).max() < 1e-4


IMPORTED_LIKE = {
    "olmoe": ["qk_norm=true", "moe.router.num_shared_experts=0"],
    "llama": ["moe.router.renormalize=true", "moe.router.num_shared_experts=0", "num_kv_heads=2"],
}


def imported_like(kind, out, store_dir):
    """A random tiny model shaped like an imported OLMoE or Mixtral (norms random too, so that
    their mapping is checked), with the store's vocabulary."""
    store = TokenStore.open(store_dir)
    cfg = ModelConfig.preset("tiny").with_overrides([f"vocab_size={store.vocab_size}", *IMPORTED_LIKE[kind]])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif "gate" in name:
                p.mul_(20)  # decisive routing
    return save_model(out, model, cfg), store.tokenizer_path


@pytest.mark.parametrize("kind", IMPORTED_LIKE)
def test_models_without_shared_experts_run_as_llama_cpps_olmoe_and_llama(kind, store_dir, tmp_path):
    checkpoint, tokenizer = imported_like(kind, tmp_path / kind, store_dir)
    path = export_gguf(checkpoint, tmp_path / "m.gguf", type="f32", tokenizer=tokenizer)
    reference = GGUFModel(path)
    assert reference.arch == kind
    model, _ = load_for_inference(checkpoint)
    ids = list(range(3, 40))
    with torch.no_grad():
        ours_SV = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(reference.logits(ids) - ours_SV).max() < 1e-4


@pytest.mark.parametrize("kind", IMPORTED_LIKE)
def test_llama_cpp_runs_the_olmoe_and_llama_files_as_we_do(llama_cpp, kind, store_dir, tmp_path):
    checkpoint, tokenizer = imported_like(kind, tmp_path / kind, store_dir)
    path = export_gguf(checkpoint, tmp_path / "m.gguf", type="f32", tokenizer=tokenizer)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1, logits_all=True,
                          type_k=0, type_v=0, flash_attn=False, verbose=False)
    model, _ = load_for_inference(checkpoint)
    ids = list(range(3, 40))
    llm.eval(ids)
    with torch.no_grad():
        ours_SV = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(np.array(llm.scores[: len(ids)]) - ours_SV).max() < 1e-3
