"""Choosing which routed experts each MoE layer keeps, from calibration data.

Every method ends the same way: per layer, the `n` routed experts with the highest score, ids
sorted ascending (shared experts are kept separately, always). The methods differ in the score:

- layerwise: mean router probability, measured layer by layer on the model whose earlier layers
  are already pruned (the paper's default);
- global: mean router probability of the unpruned model, every layer from one pass;
- easy-ep: sum over tokens of gate weight x expert output norm x (1 - cos(h, h + moe(h)));
- random: a seeded permutation, no calibration data.

Scores that do not depend on `n` are computed once and reused for every `n` (a sweep over keep
fractions costs one calibration pass); layerwise selection has to redo its passes for each `n`.

Legend: T tokens, E routed experts of a layer, K routed experts per token, D model dim.
"""

from __future__ import annotations

import contextlib
import enum

import torch
from torch import nn
from tqdm.auto import tqdm

from emomoe.select.calibration import valid_tokens
from emomoe.select.easy_ep import easy_ep_scores
from emomoe.select.routing import MoELayer, capture_routed_logits, restrict_routing, run_until_stopped

Batch = dict[str, torch.Tensor]


class SelectMethod(enum.StrEnum):
    LAYERWISE = "layerwise"
    """Greedy, layer by layer: prune layer 0 by mean router probability, re-measure layer 1 on the
    pruned model, and so on (the paper's router-based selection)."""
    GLOBAL = "global"
    """Top-n by mean router probability of the unpruned model, all layers from one pass."""
    EASY_EP = "easy-ep"
    """EASY-EP (Dong et al. 2025): gate weight x expert output norm x the token's
    1 - cos(h, h + moe(h)), summed over calibration tokens, on the unpruned model."""
    RANDOM = "random"
    """A seeded random subset per layer; ignores the calibration data."""

    @property
    def needs_calibration(self) -> bool:
        return self is not SelectMethod.RANDOM


def top_n(scores_E: torch.Tensor, n: int) -> list[int]:
    return sorted(scores_E.topk(n).indices.tolist())


class ExpertSelector:
    """Selects experts of one model on one calibration set, for any number of kept experts."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[MoELayer],
        batches: list[Batch],
        method: SelectMethod,
        seed: int = 0,
        progress: bool = False,
    ):
        self.model = model
        self.layers = layers
        self.batches = batches
        self.method = SelectMethod(method)
        self.seed = seed
        self.progress = progress
        self._static_scores: list[torch.Tensor] | None = None
        self._greedy_mass: dict[tuple[tuple[int, ...], ...], torch.Tensor] = {}

    def choose(self, num_keep_per_layer: list[int]) -> list[list[int]]:
        """Kept routed expert ids (ascending) for every MoE layer."""
        if self.method is SelectMethod.LAYERWISE:
            return self._greedy(num_keep_per_layer)
        if self._static_scores is None:
            self._static_scores = self._compute_static_scores()
        return [top_n(s_E, n) for s_E, n in zip(self._static_scores, num_keep_per_layer)]

    def _compute_static_scores(self) -> list[torch.Tensor]:
        if self.method is SelectMethod.RANDOM:
            gen = torch.Generator().manual_seed(self.seed)
            # Descending scores along a random permutation: top-n is its first n entries.
            scores = []
            for layer in self.layers:
                scores_E = torch.empty(layer.num_routed)
                scores_E[torch.randperm(layer.num_routed, generator=gen)] = -torch.arange(layer.num_routed).float()
                scores.append(scores_E)
            return scores
        if self.method is SelectMethod.EASY_EP:
            with torch.inference_mode():
                return easy_ep_scores(self.model, self.layers, self._iter("easy-ep"))
        return self._router_mass(list(range(len(self.layers))), kept={}, desc="router mass")

    def _greedy(self, num_keep_per_layer: list[int]) -> list[list[int]]:
        kept: dict[int, list[int]] = {}
        for i in range(len(self.layers)):
            # A layer's statistic depends only on the layers pruned before it, so a sweep over
            # several counts measures layer 0 (and any shared prefix) once.
            key = tuple(tuple(kept[j]) for j in range(i))
            if key not in self._greedy_mass:
                (self._greedy_mass[key],) = self._router_mass([i], kept, desc=f"layerwise {i + 1}/{len(self.layers)}")
            kept[i] = top_n(self._greedy_mass[key], num_keep_per_layer[i])
        return [kept[i] for i in range(len(self.layers))]

    def _router_mass(self, measured: list[int], kept: dict[int, list[int]], desc: str) -> list[torch.Tensor]:
        """Token-mean router probability of every routed expert of the `measured` layers, with the
        layers in `kept` restricted to those experts; each pass stops after the last measured layer."""
        with contextlib.ExitStack() as stack, torch.inference_mode():
            stack.enter_context(restrict_routing(self.layers, kept))
            captured = [
                stack.enter_context(capture_routed_logits(self.layers[i], stop=i == measured[-1])) for i in measured
            ]
            sums = [torch.zeros(self.layers[i].num_routed, dtype=torch.float64) for i in measured]
            num_tokens = 0
            for batch in self._iter(desc):
                run_until_stopped(self.model, batch)
                valid_T = valid_tokens(batch)
                for mass_E, logits in zip(sums, captured):
                    mass_E += torch.softmax(logits.pop()[valid_T], dim=-1).sum(0, dtype=torch.float64)
                num_tokens += int(valid_T.sum())
        return [mass_E / num_tokens for mass_E in sums]

    def _iter(self, desc: str):
        self.model.eval()
        return tqdm(self.batches, desc=desc, disable=not self.progress, leave=False, unit="batch")
