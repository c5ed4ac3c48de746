import torch
from torch import nn

from emomoe.model import ModelConfig, build_model
from emomoe.train.config import TrainConfig
from emomoe.train.optim import build_optimizer, split_decay_groups


def test_embeddings_norms_and_vectors_are_not_decayed():
    model = build_model(ModelConfig.preset("tiny"))
    decay, no_decay = split_decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay}
    kept = {names[id(p)] for p in no_decay}
    assert "embed.weight" in kept
    assert all(n in kept for n in names.values() if "norm" in n)
    assert {"lm_head.weight", "layers.0.moe.experts.w1", "layers.0.attn.q_proj.weight"} <= decayed
    assert decayed.isdisjoint(kept) and decayed | kept == set(names.values())


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    model[1].weight.requires_grad_(False)
    decay, no_decay = split_decay_groups(model)
    assert all(p is not model[1].weight for p in decay + no_decay)
    assert len(decay) == 0 and len(no_decay) == 2  # embedding table + bias


def test_optimizer_settings():
    cfg = TrainConfig(lr=1e-3, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.2)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 2))
    optimizer = build_optimizer(model, cfg)
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    assert decays == [0.0, 0.2]
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-6 and group["lr"] == 1e-3


def test_weight_decay_moves_only_decayed_weights():
    model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 3))
    optimizer = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only decay can move a weight
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert moved == [False, True, False]  # embedding, linear weight, linear bias
