"""Choosing which routed experts each MoE layer keeps, from calibration data.

Every method ends the same way: per layer, the `n` routed experts with the highest score, ids
sorted ascending (shared experts are kept separately, always). The methods differ in the score:

- layerwise: mean router probability, measured layer by layer on the model whose earlier layers
  are already pruned (the paper's default);
- global: mean router probability of the unpruned model, every layer from one pass;
- easy-ep: sum over tokens of gate weight x expert output norm x (1 - cos(h, h + moe(h)));
- reap: mean over the tokens routed to the expert of gate weight x expert output norm;
- random: a seeded permutation, no calibration data.

(`emomoe.select.saliency` has the exact definitions.) Scores that do not depend on `n` are computed
once and reused for every `n` (a sweep over keep fractions costs one calibration pass, and global,
easy-ep and reap selectors of one calibration set can share it: `score_together`); layerwise
selection has to redo its pass for each `n`. The unpruned model's router mass on the calibration
tokens (`profile`, what `--selection auto` compares prompts with) comes free with the global,
easy-ep and reap scores; layerwise selection pays one more pass for it.

Every pass streams (`emomoe.select.stream`): one block at a time, reading only what the block
needs. Layerwise selection reads only the experts it keeps, and `write_subset` hands each block's
subset tensors on as soon as the block is chosen, so a checkpoint larger than RAM can be selected
from; the other methods read every expert once, a chunk at a time, then extract the subset.

Legend: E routed experts of a layer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from emomoe.select.routing import MoELayer, moe_layers
from emomoe.select.saliency import layer_scores
from emomoe.select.slicing import AddTensor, block_subset, extract_subset, read_blocks, subset_config
from emomoe.select.stream import LayerStream, relative
from emomoe.select.weight_source import WeightSource

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
    REAP = "reap"
    """REAP (Lasby et al. 2025): gate weight x expert output norm, averaged over the calibration
    tokens routed to the expert, on the unpruned model."""
    RANDOM = "random"
    """A seeded random subset per layer; ignores the calibration data."""

    @property
    def needs_calibration(self) -> bool:
        return self is not SelectMethod.RANDOM


UNPRUNED_PASS = (SelectMethod.GLOBAL, SelectMethod.EASY_EP, SelectMethod.REAP)
"""The methods that score every layer from one pass of the unpruned model."""


def top_n(scores_E: torch.Tensor, n: int) -> list[int]:
    return sorted(scores_E.topk(n).indices.tolist())


def score_together(selectors: Sequence[ExpertSelector]) -> None:
    """Score the selectors of one source and one calibration set that rank on the unpruned model
    (global, easy-ep, reap) from one pass, when that pass is the one easy-ep and reap take anyway:
    it measures all three scores, and the router mass is every one's profile. (Global alone keeps
    its own pass, which stops at the last layer's gate.)"""
    unpruned = [s for s in selectors if s.method in UNPRUNED_PASS and s._static_scores is None]
    if not any(s.method is not SelectMethod.GLOBAL for s in unpruned):
        return
    saliency = unpruned[0]._saliency_pass()
    for selector in unpruned:
        selector._static_scores, selector._profile = saliency[selector.method], saliency[SelectMethod.GLOBAL]


class ExpertSelector:
    """Selects experts of one model (any `WeightSource`) on one calibration set, for any number kept."""

    def __init__(
        self,
        source: WeightSource,
        batches: Sequence[Batch],
        method: SelectMethod | str,
        seed: int = 0,
        progress: bool = False,
        where: str = "model",
    ):
        self.source = source
        self.layers = moe_layers(source.config, where=where)
        self.batches = batches
        self.method = SelectMethod(method)
        self.seed = seed
        self.progress = progress
        self._static_scores: list[torch.Tensor] | None = None
        self._profile: list[torch.Tensor] | None = None
        self._greedy_mass: dict[tuple[tuple[int, ...], ...], torch.Tensor] = {}

    def choose(self, num_keep_per_layer: list[int]) -> list[list[int]]:
        """Kept routed expert ids (ascending) for every MoE layer."""
        if self.method is SelectMethod.LAYERWISE:
            return [kept for kept, _ in self._layerwise(num_keep_per_layer) if kept is not None]
        return [top_n(s_E, n) for s_E, n in zip(self.scores(), num_keep_per_layer)]

    def scores(self) -> list[torch.Tensor]:
        """Per MoE layer, the score of every routed expert (higher is kept first), computed once;
        not for layerwise, whose scores depend on what was kept before."""
        if self.method is SelectMethod.LAYERWISE:
            raise ValueError("layerwise scores depend on the experts kept in earlier layers; use choose()")
        if self._static_scores is None:
            self._static_scores = self._compute_static_scores()
        return self._static_scores

    def profile(self) -> list[torch.Tensor]:
        """Per MoE layer, the unpruned model's token-mean router probability of every routed expert
        over the calibration tokens (float64 [E]): a selection's calibration profile. Computed once;
        not for random, which has no calibration data."""
        if self.method is SelectMethod.RANDOM:
            raise ValueError("a random selection has no calibration tokens to profile")
        if self._profile is None:
            if self.method is SelectMethod.LAYERWISE:
                _, self._profile = self._unpruned_pass(SelectMethod.GLOBAL)
            else:
                self.scores()
        return self._profile

    def budget_shares(self) -> list[torch.Tensor]:
        """Per MoE layer, every routed expert's share of its layer's total score: what a size budget
        ranks the experts of all layers by (`emomoe.select.budget`). Layerwise ranks by the unpruned
        model's router mass, its profile: its own scores depend on the counts being chosen."""
        scores = self.profile() if self.method is SelectMethod.LAYERWISE else self.scores()
        return [scores_E / scores_E.sum().clamp(min=torch.finfo(scores_E.dtype).tiny) for scores_E in scores]

    def use_profile(self, profile: list[torch.Tensor]) -> None:
        """Take the calibration profile another selector of the same source measured on the same
        batches, instead of a pass of its own."""
        self._profile = profile

    def write_subset(self, num_keep_per_layer: list[int], add: AddTensor) -> list[list[int]]:
        """Choose, and hand every tensor of the subset to `add` (see `extract_subset`); returns the
        kept ids. Layerwise hands each block on as soon as it is chosen: the kept experts it read
        to run the block are the ones written."""
        if self.method is not SelectMethod.LAYERWISE:
            kept = self.choose(num_keep_per_layer)
            extract_subset(self.source, read_blocks(self.source, self.layers, kept), add)
            return kept
        kept = []

        def blocks() -> Iterator[dict[str, torch.Tensor]]:
            for kept_routed, tensors in self._layerwise(num_keep_per_layer):
                if kept_routed is not None:
                    kept.append(kept_routed)
                yield tensors

        extract_subset(self.source, blocks(), add)
        return kept

    def _compute_static_scores(self) -> list[torch.Tensor]:
        if self.method is SelectMethod.RANDOM:
            gen = torch.Generator().manual_seed(self.seed)
            # Descending positive scores along a random permutation: top-n is its first n entries, and
            # as shares of their layer's total they rank the layers' experts alike, rank by rank.
            scores = []
            for layer in self.layers:
                scores_E = torch.empty(layer.num_routed, dtype=torch.float64)
                ranks_E = torch.arange(layer.num_routed, 0, -1, dtype=torch.float64)
                scores_E[torch.randperm(layer.num_routed, generator=gen)] = ranks_E
                scores.append(scores_E)
            return scores
        scores, self._profile = self._unpruned_pass(self.method)
        return scores

    def _unpruned_pass(self, method: SelectMethod) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One pass through the unpruned model, scoring each MoE layer on the way: the scores of
        `method` (global, easy-ep or reap) and the router mass, per layer."""
        if method is SelectMethod.GLOBAL:
            masses = self._pass(method, lambda stream, layer, last: stream.router_mass(
                layer, stream.unpruned_block(layer.index), advance=not last  # the last layer's experts change no score
            ))
            return masses, masses
        saliency = self._saliency_pass()
        return saliency[method], saliency[SelectMethod.GLOBAL]

    def _saliency_pass(self) -> dict[SelectMethod, list[torch.Tensor]]:
        """Per layer, the router mass (global's score) and the easy-ep and reap scores, from one pass."""
        scores = self._pass(SelectMethod.EASY_EP, lambda stream, layer, last: layer_scores(stream, layer))
        return {
            SelectMethod.GLOBAL: [s.mass_E for s in scores], SelectMethod.EASY_EP: [s.easy_ep_E for s in scores],
            SelectMethod.REAP: [s.reap_E for s in scores],
        }

    def _pass(self, method: SelectMethod, score: Callable[[LayerStream, MoELayer, bool], Any]) -> list[Any]:
        """`score(stream, layer, is_last)` of every MoE layer, in one pass through the unpruned model
        (`score` moves the hidden states on through the layer, unless it is the last)."""
        stream = LayerStream(self.source, self.batches)
        by_index = {layer.index: layer for layer in self.layers}
        scores = []
        for index in self._bar(range(self.layers[-1].index + 1), desc=str(method)):
            layer = by_index.get(index)
            if layer is None:
                stream.advance(stream.unpruned_block(index))
            else:
                scores.append(score(stream, layer, index == self.layers[-1].index))
            self.source.close()
        return scores

    def _layerwise(self, num_keep_per_layer: list[int]) -> Iterator[tuple[list[int] | None, dict[str, torch.Tensor]]]:
        """Per block in order: the kept routed ids (None for a dense block) and its subset tensors."""
        stream = LayerStream(self.source, self.batches)
        sub_cfg = subset_config(self.source.config, self.layers, num_keep_per_layer)
        position = {layer.index: i for i, layer in enumerate(self.layers)}
        kept: list[list[int]] = []
        for index in self._bar(range(self.source.config.num_layers), desc="layerwise"):
            layer, kept_routed, attention = None, None, None
            if index in position:
                layer = self.layers[position[index]]
                # A layer's statistic depends only on the layers pruned before it, so a sweep over
                # several counts measures layer 0 (and any shared prefix) once.
                key = tuple(map(tuple, kept))
                if key not in self._greedy_mass:
                    self._greedy_mass[key], attention = stream.measure(layer)
                kept_routed = top_n(self._greedy_mass[key], num_keep_per_layer[position[index]])
                kept.append(kept_routed)
            tensors = block_subset(self.source, index, layer, kept_routed)
            self.source.close()  # the block holds copies: unmap the pages read before running it
            if index < self.layers[-1].index:  # later blocks do not change any choice
                stream.advance_pruned(sub_cfg, index, relative(tensors, index), attention)
            yield kept_routed, tensors

    def _bar(self, items, desc: str):
        return tqdm(items, desc=desc, disable=not self.progress, leave=False, unit="layer")
