import re

import pytest
import torch

from emomoe import ModelConfig, build_model
from emomoe.errors import ConfigError
from emomoe.model.config import parse_pool

PRESETS = ["tiny", "small", "emo-1b14b", "std-1b14b", "std-1b4b", "dense-1b"]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate_and_round_trip_through_yaml(name, tmp_path):
    cfg = ModelConfig.preset(name)
    cfg.to_yaml(tmp_path / "model.yaml")
    assert ModelConfig.from_yaml(tmp_path / "model.yaml") == cfg


def test_paper_architecture_matches_the_spec():
    emo, std = ModelConfig.preset("emo-1b14b"), ModelConfig.preset("std-1b14b")
    assert emo.moe.router.pool == "8..128" and std.moe.router.pool == "off"
    assert (emo.num_layers, emo.d_model, emo.num_heads, emo.vocab_size) == (16, 2048, 16, 100352)
    assert (emo.moe.num_experts, emo.moe.router.num_shared_experts, emo.moe.top_k) == (128, 1, 7)
    assert (emo.moe.expert_hidden_size, emo.rope_theta, emo.norm_eps, emo.qk_norm) == (1024, 5e5, 1e-6, False)
    total, active = emo.num_params()
    # Spec section 2.1: ~13.57B total, ~1.08B active without embeddings.
    assert 13.5e9 < total < 13.65e9
    assert 1.05e9 < emo.num_params(embeddings=False)[1] < 1.1e9 < active


def test_reg_moe_at_32_builds_on_the_meta_device_with_its_3_9b_parameters():
    cfg = ModelConfig.preset("std-1b4b")
    with torch.device("meta"):
        model = build_model(cfg)
    # Spec sections 2.1 and 2.2, counted by hand: 16 layers of 32 SwiGLU experts (2048 -> 1024 -> 2048),
    # attention (4 projections of 2048 x 2048), a router of 32 rows and two norms; the final norm; the
    # untied embedding and LM head over 100,352 tokens.
    layer = 32 * 3 * 2048 * 1024 + 4 * 2048 * 2048 + 32 * 2048 + 2 * 2048
    expected = 16 * layer + 2048 + 2 * 100_352 * 2048
    assert expected == 3_901_818_880
    assert sum(p.numel() for p in model.parameters()) == expected == cfg.num_params()[0]
    assert (cfg.moe.num_experts, cfg.moe.router.num_shared_experts, cfg.moe.top_k, cfg.moe.router.pool) == (32, 1, 7, "off")
    assert cfg.with_overrides(["moe.num_experts=128"]) == ModelConfig.preset("std-1b14b")


@pytest.mark.parametrize("overrides", [[], ["qk_norm=true", "num_kv_heads=2"], ["moe.num_experts_per_layer=[3, 8]"]])
def test_num_params_counts_the_built_model(overrides):
    cfg = ModelConfig.preset("tiny").with_overrides(overrides)
    model = build_model(cfg)
    assert cfg.num_params()[0] == sum(p.numel() for p in model.parameters())


def test_active_params_count_top_k_plus_shared_experts():
    cfg = ModelConfig.preset("tiny")
    total, active = cfg.num_params()
    expert = 3 * cfg.d_model * cfg.moe.expert_hidden_size
    unused = cfg.moe.num_experts - cfg.moe.top_k - cfg.moe.router.num_shared_experts
    assert total - active == cfg.num_layers * unused * expert


def test_printing_a_config_shows_total_and_active_params():
    text = str(ModelConfig.preset("emo-1b14b"))
    assert "total 13.57B" in text and "active 1.49B" in text


def test_bare_off_in_yaml_means_no_pool(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("moe:\n  router:\n    pool: off\n    eval_pool: 32\n")
    cfg = ModelConfig.from_yaml(path)
    assert cfg.moe.router.pool == "off" and cfg.moe.router.eval_pool == "32"
    assert ModelConfig.preset("small").with_overrides(["moe.router.pool=off"]).moe.router.pool == "off"


@pytest.mark.parametrize(
    ("text", "expected"), [("off", None), ("32", (32, 32)), ("8..128", (8, 128)), (" 4..4 ", (4, 4))]
)
def test_parse_pool(text, expected):
    assert parse_pool(text, "pool") == expected


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["moe.router.pool=1..8"], "moe.router.pool"),
        (["moe.router.pool=8-128"], "moe.router.pool"),
        (["moe.router.pool=9..4"], "moe.router.pool"),
        (["moe.router.eval_pool=1"], "moe.router.eval_pool"),
        (["moe.router.eval_pool=2..8"], "moe.router.eval_pool"),
        (["moe.router.num_shared_experts=9"], "moe.router.num_shared_experts"),
        (["moe.router.lb_window=0"], "moe.router.lb_window"),
        (["moe.top_k=8"], "moe.top_k"),
        (["moe.top_k=0"], "moe.top_k"),
        (["moe.num_experts_per_layer=[8]"], "moe.num_experts_per_layer"),
        (["moe.num_experts_per_layer=[8, 0]"], "moe.num_experts_per_layer[1]"),
        (["num_kv_heads=3"], "num_kv_heads"),
        (["num_heads=5"], "num_heads"),
        (["eos_id=512"], "eos_id"),
    ],
)
def test_bad_configs_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match="^" + re.escape(field) + ":"):
        ModelConfig.preset("tiny").with_overrides(overrides)


def test_build_model_validates_a_hand_made_config():
    cfg = ModelConfig.preset("tiny")
    cfg.moe.top_k = 20
    with pytest.raises(ConfigError, match="^moe.top_k:"):
        build_model(cfg)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'.*tiny, small"):
        ModelConfig.preset("huge")


def test_top_k_is_clamped_per_layer_for_sliced_subsets():
    cfg = ModelConfig.preset("tiny").with_overrides(["moe.num_experts_per_layer=[3, 8]"])
    assert [cfg.moe.top_k_in_layer(i) for i in range(2)] == [2, 2]
    cfg = ModelConfig.preset("tiny").with_overrides(["moe.num_experts_per_layer=[2, 1]"])
    assert [cfg.moe.top_k_in_layer(i) for i in range(2)] == [1, 0]
