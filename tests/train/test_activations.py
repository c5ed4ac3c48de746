"""The activation accounting against what the model really keeps for its backward.

Two independent references on real float32 forwards: the tensors autograd saves
(`saved_tensors_hooks`, one count per storage), and the live tensor memory right after the forward
(a dispatch mode that follows every storage an op makes until it is freed), which also sees what
activation checkpointing keeps. Configs vary every dimension the accounting has a term for.
"""

from __future__ import annotations

import contextlib
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from emomoe import kernels
from emomoe.model import build_model
from emomoe.model.config import ModelConfig
from emomoe.train import parallel
from emomoe.train.activations import MicroBatch, activation_memory
from emomoe.train.config import Precision

BASE = [
    "vocab_size=200", "d_model=48", "num_heads=4", "num_layers=2", "max_seq_len=64", "eos_id=0",
    "moe.num_experts=10", "moe.top_k=3", "moe.expert_hidden_size=40", "moe.router.pool=4..9",
]
VARIANTS = {
    "hidden narrower than d_model": [],
    "hidden wider than d_model": ["moe.expert_hidden_size=64"],
    "no document mask": ["doc_attention_mask=false"],
    "no shared expert": ["moe.router.num_shared_experts=0"],
    "two shared experts": ["moe.router.num_shared_experts=2"],
    "qk-norm": ["qk_norm=true"],
    "grouped-query attention": ["num_kv_heads=2"],
    "standard routing": ["moe.router.pool=off"],
    "selection bias": ["moe.router.bias_update_rate=0.01"],
    "dense": ["moe.num_experts=1", "moe.top_k=0"],
}
BATCH, SEQ = 3, 20


def _model_and_batch(overrides: list[str]):
    cfg = ModelConfig.preset("tiny").with_overrides(BASE + overrides)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    ids_BS = torch.randint(1, cfg.vocab_size, (BATCH, SEQ))
    ids_BS[:, 7::7] = 0  # EOS: documents of 7 tokens
    return cfg, model, ids_BS, torch.randint(0, cfg.vocab_size, (BATCH, SEQ))


def _ops(fused: bool):
    return contextlib.nullcontext() if fused else kernels.disabled()


def _weights(model: torch.nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernels", "pytorch-ops"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_terms_are_exactly_what_autograd_saves(variant, fused):
    if fused and not kernels.usable(torch.zeros(1)):
        pytest.skip("the fused kernels did not build here")
    cfg, model, ids_BS, labels_BS = _model_and_batch(VARIANTS[variant])
    weights, saved = _weights(model), {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with _ops(fused), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids_BS, labels_BS=labels_BS)
    assert activation_memory(cfg, MicroBatch(BATCH, SEQ, fused_kernels=fused)).saved == sum(saved.values())


class LiveTensors(TorchDispatchMode):
    """Bytes of the storages ops have made and that are still alive; weights are left out, and so
    are scalars (the losses a forward returns)."""

    def __init__(self, ignored: set[int]):
        super().__init__()
        self.sizes = dict.fromkeys(ignored, 0)
        self.live = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() and t.untyped_storage().data_ptr() not in self.sizes:
                storage = t.untyped_storage()
                self.sizes[storage.data_ptr()] = storage.nbytes()
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, storage.data_ptr())
        return out

    def _free(self, key: int) -> None:
        self.live -= self.sizes.pop(key, 0)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kept", "checkpointed"])
@pytest.mark.parametrize("variant", ["hidden narrower than d_model", "hidden wider than d_model", "dense"])
def test_what_stays_alive_after_the_forward_with_and_without_activation_checkpointing(variant, checkpointing):
    cfg, model, ids_BS, labels_BS = _model_and_batch(VARIANTS[variant])
    if checkpointing:
        parallel.checkpoint_activations(model)
    tracker = LiveTensors(_weights(model))
    with kernels.disabled(), tracker:
        out = model(ids_BS, labels_BS=labels_BS)  # noqa: F841 (the graph lives as long as the output)
        live = tracker.live
    assert activation_memory(cfg, MicroBatch(BATCH, SEQ), checkpointing).saved == live


def test_checkpointing_keeps_less_and_bf16_halves_the_matmul_activations():
    cfg = ModelConfig.preset("emo-1b14b")
    fp32, bf16 = MicroBatch(4, 4096), MicroBatch(4, 4096, Precision.BF16)
    assert activation_memory(cfg, fp32, True).saved < activation_memory(cfg, fp32).saved / 4
    # Hand count of one expert-routed slot's largest tensors: the gate and up projections,
    # 2 x 7 slots x 1024 hidden x 4 bytes per token and layer, halve under bf16.
    per_token = 2 * 7 * 1024
    assert activation_memory(cfg, fp32).saved - activation_memory(cfg, bf16).saved > 16 * 4 * 4096 * per_token * 2
