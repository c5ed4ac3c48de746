import pytest
import yaml

from emomoe.errors import ConfigError
from emomoe.model import ModelConfig
from emomoe.train.config import RunConfig, TrainConfig

CONFIGS = [
    "demo-emo.yaml", "demo-std.yaml", "demo-anneal.yaml", "emo-1b14b.yaml", "emo-1b14b-anneal.yaml", "std-1b14b.yaml",
    "std-1b4b.yaml",
]


def test_preset_with_nested_overrides():
    cfg = RunConfig.from_dict(
        {"model": {"preset": "small", "d_model": 64, "moe": {"router": {"pool": "off"}}}, "data": {"store": "x"}}
    )
    small = ModelConfig.preset("small")
    assert cfg.model.d_model == 64 and cfg.model.moe.router.pool == "off"
    assert cfg.model.moe.num_experts == small.moe.num_experts  # untouched preset fields survive


def test_resolved_config_round_trips_without_preset(tmp_path):
    cfg = RunConfig.from_dict({"model": {"preset": "tiny"}, "data": {"store": "x", "seq_len": 64}, "train": {"lr": "1e-3"}})
    path = tmp_path / "config.yaml"
    cfg.to_yaml(path)
    assert "preset" not in yaml.safe_load(path.read_text())["model"]
    assert RunConfig.from_yaml(path) == cfg
    assert cfg.train.lr == 1e-3


@pytest.mark.parametrize(
    "data, match",
    [
        ({"model": {"preset": "nope"}}, "model.preset.*unknown model preset 'nope'"),
        ({"train": {"max_stepz": 3}}, "train.max_stepz"),
        ({"train": {"max_steps": "many"}}, "train.max_steps: expected an integer"),
        ({"train": {"schedule": "step"}}, "train.schedule: 'step' is not one of"),
        ({"train": {"warmup_steps": 10, "decay_steps": 5}}, "train.decay_steps"),
        ({"train": {"peak_flops": -1.0}}, "train.peak_flops: expected a number >= 0, got -1.0"),
        ({"model": {"preset": "tiny"}, "data": {"seq_len": 4096}}, "data.seq_len: 4096 exceeds model.max_seq_len"),
    ],
)
def test_bad_values_name_the_field(data, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.from_dict(data)


def test_overrides_reach_every_section():
    cfg = RunConfig.from_dict({"model": {"preset": "tiny"}, "data": {"seq_len": 64}})
    cfg = cfg.with_overrides(["train.max_steps=7", "model.moe.router.pool=2..6", "data.batch_size=3"])
    assert (cfg.train.max_steps, cfg.model.moe.router.pool, cfg.data.batch_size) == (7, "2..6", 3)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(name, request):
    cfg = RunConfig.from_yaml(request.config.rootpath / "configs" / name)
    assert cfg.train.max_steps > 0


def test_demo_pair_differs_only_in_pool(request):
    configs = request.config.rootpath / "configs"
    emo = RunConfig.from_yaml(configs / "demo-emo.yaml")
    std = RunConfig.from_yaml(configs / "demo-std.yaml")
    assert emo.model.moe.router.pool != "off" and std.model.moe.router.pool == "off"
    assert emo.with_overrides(["model.moe.router.pool=off"]) == std


def test_paper_recipe_matches_the_spec(request):
    configs = request.config.rootpath / "configs"
    emo = RunConfig.from_yaml(configs / "emo-1b14b.yaml")
    std = RunConfig.from_yaml(configs / "std-1b14b.yaml")
    t = emo.train
    assert (t.lr, t.warmup_steps, t.max_steps, t.final_lr_ratio, t.weight_decay, t.grad_clip) == (
        4e-3, 2000, 238419, 0.1, 0.1, 1.0,
    )
    assert (t.beta1, t.beta2) == (0.9, 0.95)
    assert emo.data.seq_len * emo.data.batch_size * t.num_micro_batches * 128 == 1024 * 4096
    loss = emo.model.loss
    assert (loss.lb_weight, loss.router_z_weight, loss.logit_z_weight) == (0.1, 0.001, 1e-5)
    assert (emo.model.moe.router.pool, emo.model.moe.router.eval_pool) == ("8..128", "32")
    assert std.model.moe.router.pool == "off"
    assert std.train == emo.train and std.data == emo.data


def test_the_released_models_anneal_continues_the_1t_run_for_50b_tokens(request):
    # olmoe-1B-7B_fsl_anneal.py: --anneal-tokens 50e9 over 1024 x 4096-token batches, to step
    # checkpoint + anneal steps, on the pretraining's model and data.
    configs = request.config.rootpath / "configs"
    emo = RunConfig.from_yaml(configs / "emo-1b14b.yaml")
    anneal = RunConfig.from_yaml(configs / "emo-1b14b-anneal.yaml")
    assert anneal.model == emo.model and anneal.data == emo.data
    assert anneal.train.anneal_from and anneal.train.init_from is None
    assert anneal.train.max_steps == 238419 + 50_000_000_000 // (1024 * 4096) == 250339
    tokens_per_step = anneal.data.seq_len * anneal.data.batch_size * anneal.train.num_micro_batches * 128
    assert tokens_per_step == 1024 * 4096
    same = ["num_micro_batches", "precision", "parallelism", "activation_checkpointing", "grad_clip", "seed"]
    assert all(getattr(anneal.train, f) == getattr(emo.train, f) for f in same)


def test_the_demos_anneal_continues_the_standard_run_with_emo_routing(request):
    configs = request.config.rootpath / "configs"
    std = RunConfig.from_yaml(configs / "demo-std.yaml")
    emo = RunConfig.from_yaml(configs / "demo-emo.yaml")
    anneal = RunConfig.from_yaml(configs / "demo-anneal.yaml")
    assert anneal.train.anneal_from == "runs/demo/std" and anneal.data == std.data  # the data order goes on
    assert anneal.model == emo.model
    assert anneal.train.max_steps == std.train.max_steps * 6 // 5


def test_reg_moe_at_32_is_the_standard_recipe_with_32_experts_for_130b_tokens(request):
    configs = request.config.rootpath / "configs"
    std = RunConfig.from_yaml(configs / "std-1b14b.yaml")
    small = RunConfig.from_yaml(configs / "std-1b4b.yaml")
    assert small.model.moe.num_experts == 32 and small.train.max_steps == 30995
    assert small.with_overrides(["model.moe.num_experts=128", "train.max_steps=238419"]) == std
    tokens = small.train.max_steps * small.data.batch_size * small.train.num_micro_batches * 128 * small.data.seq_len
    assert 129e9 < tokens < 131e9


def test_train_config_rejects_nonsense():
    with pytest.raises(ConfigError, match="num_micro_batches"):
        TrainConfig.from_dict({"num_micro_batches": 0})
    with pytest.raises(ConfigError, match="final_lr_ratio"):
        TrainConfig.from_dict({"final_lr_ratio": 2})
