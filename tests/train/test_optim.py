import pytest
import torch
from torch import nn

from emomoe.model import ModelConfig, build_model
from emomoe.train.config import NoDecay, TrainConfig
from emomoe.train.optim import build_optimizer, split_decay_groups


def named_groups(model, no_decay):
    decay, exempt = split_decay_groups(model, no_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in decay}, {names[id(p)] for p in exempt}, set(names.values())


def test_by_default_only_the_embedding_is_exempt_as_in_the_paper():
    decayed, exempt, every = named_groups(build_model(ModelConfig.preset("tiny")), NoDecay.EMBEDDINGS)
    assert exempt == {"embed.weight"}
    assert {"lm_head.weight", "norm.weight", "layers.0.attn_norm.weight", "layers.0.moe.router.gate.weight"} <= decayed
    assert decayed | exempt == every
    assert TrainConfig().no_decay is NoDecay.EMBEDDINGS


def test_norms_can_be_exempt_too():
    decayed, exempt, every = named_groups(build_model(ModelConfig.preset("tiny")), NoDecay.EMBEDDINGS_AND_NORMS)
    norms = {n for n in every if "norm" in n}
    assert len(norms) == 5 and exempt == {"embed.weight"} | norms  # 2 per block + the final norm
    assert {"lm_head.weight", "layers.0.moe.experts.w1", "layers.0.attn.q_proj.weight"} <= decayed
    assert decayed.isdisjoint(exempt) and decayed | exempt == every


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    model[1].weight.requires_grad_(False)
    decay, exempt = split_decay_groups(model, NoDecay.EMBEDDINGS_AND_NORMS)
    assert all(p is not model[1].weight for p in decay + exempt)
    assert len(decay) == 0 and len(exempt) == 2  # embedding table + bias


def test_optimizer_settings():
    cfg = TrainConfig(lr=1e-3, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.2)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    optimizer = build_optimizer(model, cfg)
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.2]
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-6 and group["lr"] == 1e-3


@pytest.mark.parametrize(
    "no_decay, expected", [("embeddings", [False, True, True]), ("embeddings_and_norms", [False, True, False])]
)
def test_weight_decay_moves_only_decayed_weights(no_decay, expected):
    model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 3))
    cfg = TrainConfig.from_dict({"lr": 0.1, "weight_decay": 0.5, "no_decay": no_decay})
    optimizer = build_optimizer(model, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only decay can move a weight
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert moved == expected  # embedding, linear weight, linear bias
