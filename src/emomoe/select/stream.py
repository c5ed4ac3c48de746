"""Calibration tokens run through a model one block at a time, each block's weights read from a
`WeightSource` only while it runs.

Between blocks, memory holds the calibration batches' hidden states (fp32 [B, S, D] per batch)
and their document masks. A block's weights are read in their stored dtype, upcast to fp32 inside
the block (`emomoe.model.from_weights`), run on every batch, and dropped. The peak is one block's
weights, whatever the number of layers and experts. Three kinds of block:

- `router_block`: attention, norms and gate only; its experts are never read. A forward through it
  stops at the gate (for the router statistic of a layer before it is pruned).
- `block_from_weights(cfg, i, weights)` with the subset's weights: a pruned block.
- `unpruned_block`: every expert, read a chunk at a time during the forward (`ChunkedExperts`), for
  the statistics of the unpruned model (global, EASY-EP).

Legend: B batch, S sequence, D model dim, T tokens (B*S), E routed experts of a layer, K routed
experts per token, N rows (the routed (token, expert) slots), U distinct ids (of the calibration
tokens).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from emomoe.checkpoint import INFERENCE_OVERRIDES
from emomoe.errors import DataError
from emomoe.model.attention import rope_tables
from emomoe.model.config import ModelConfig
from emomoe.model.docs import Segments
from emomoe.model.experts import Experts
from emomoe.model.from_weights import COMPUTE_DTYPE, block_from_weights
from emomoe.model.transformer import Block, document_inputs
from emomoe.select.calibration import valid_tokens
from emomoe.select.routing import MoELayer, StopForward, capture_routed_logits
from emomoe.select.slicing import block_names
from emomoe.select.weight_source import WeightSource

Batch = dict[str, torch.Tensor]

EXPERT_CHUNK_BYTES = 512 * 2**20
"""fp32 bytes of routed experts that `ChunkedExperts` holds at a time."""


@dataclasses.dataclass
class BatchState:
    x_BSD: torch.Tensor
    """Hidden states entering the next block, fp32."""
    segments: Segments
    mask_B1SS: torch.Tensor | None
    valid_T: torch.Tensor
    """Flat mask of the positions holding real text."""


def relative(weights: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Block `index`'s tensors named relative to the block (`attn.q_proj.weight`)."""
    prefix = f"layers.{index}."
    return {name.removeprefix(prefix): t for name, t in weights.items()}


class LayerStream:
    """The hidden states of calibration batches, moved through a model one block at a time."""

    def __init__(self, source: WeightSource, batches: Sequence[Batch], where: str = "calibration"):
        self.source = source
        self.cfg = source.config.with_overrides(INFERENCE_OVERRIDES)
        if not batches:
            raise DataError(f"{where}: no calibration batches")
        ids_U = torch.cat([b["input_ids_BS"].flatten() for b in batches]).unique()
        if ids_U.min() < 0 or ids_U.max() >= self.cfg.vocab_size:
            raise DataError(
                f"{where}: token id {int(ids_U.max())} is outside the model's vocabulary ({self.cfg.vocab_size})"
            )
        # Only the embedding rows of tokens that occur are read: a lookup into them is the model's.
        rows_UD = source.get("embed.weight", rows=ids_U.tolist()).to(COMPUTE_DTYPE)
        self.states = []
        for batch in batches:
            ids_BS = batch["input_ids_BS"]
            if ids_BS.shape[1] > self.cfg.max_seq_len:
                raise DataError(
                    f"{where}: windows of {ids_BS.shape[1]} tokens exceed max_seq_len {self.cfg.max_seq_len}"
                )
            segments, mask_B1SS = document_inputs(self.cfg, ids_BS, batch.get("doc_ids_BS"))
            x_BSD = rows_UD[torch.searchsorted(ids_U, ids_BS)]
            self.states.append(BatchState(x_BSD, segments, mask_B1SS, valid_tokens(batch)))
        self.cos_SDh, self.sin_SDh = rope_tables(self.cfg.max_seq_len, self.cfg.head_dim, self.cfg.rope_theta)

    def run(self, block: Block, advance: bool = True) -> Iterator[BatchState]:
        """Run `block` on every batch, yielding each batch's state right after its forward (so hooks
        on the block have just seen it). With `advance`, the state holds the block's output by then;
        without, the forward may stop early (`StopForward`) and the state is left as it was."""
        for state in self.states:
            S = state.x_BSD.shape[1]
            with torch.inference_mode():
                try:
                    x_BSD, _ = block(
                        state.x_BSD, self.cos_SDh[:S], self.sin_SDh[:S], state.mask_B1SS, state.segments, None
                    )
                except StopForward:
                    if advance:
                        raise
                else:
                    if advance:
                        state.x_BSD = x_BSD
            yield state

    def advance(self, block: Block) -> None:
        for _ in self.run(block):
            pass

    def router_mass(self, layer: MoELayer, block: Block, advance: bool = False) -> torch.Tensor:
        """Token-mean router probability of each routed expert of `layer` over the calibration
        tokens (float64 [E]); without `advance`, each forward stops at the gate."""
        mass_E = torch.zeros(layer.num_routed, dtype=torch.float64)
        num_tokens = 0
        with capture_routed_logits(block.moe.router.gate, layer.num_routed, stop=not advance) as captured:
            for state in self.run(block, advance=advance):
                mass_E += torch.softmax(captured.pop()[state.valid_T], dim=-1).sum(0, dtype=torch.float64)
                num_tokens += int(state.valid_T.sum())
        return mass_E / num_tokens

    def measure(self, layer: MoELayer) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The router mass of `layer` before it is pruned (its experts are never read), and its
        attention outputs on every batch, for `advance_pruned`."""
        block = self.router_block(layer.index)
        with capture(block.attn) as attended:
            mass_E = self.router_mass(layer, block)
        return mass_E, [output for _, output in attended]

    def advance_pruned(
        self, cfg: ModelConfig, index: int, weights: Mapping[str, torch.Tensor], attention: list[torch.Tensor] | None
    ) -> None:
        """Run block `index` of the subset (`cfg`, its `weights` relative to the block). With the
        `attention` outputs of `measure` (same inputs, same attention weights), replay them."""
        block = block_from_weights(cfg, index, weights)
        if attention:
            block.attn = Replay(attention)
        self.advance(block)

    def router_block(self, index: int) -> Block:
        """Block `index` holding its attention, norms and router only: enough to reach the gate."""
        return block_from_weights(self.cfg, index, self._non_expert_weights(index))

    def unpruned_block(self, index: int, keep_slot_norms: bool = False) -> Block:
        """Block `index` with all its experts, read a chunk at a time while it runs."""
        block = block_from_weights(self.cfg, index, self._non_expert_weights(index))
        prefix = f"layers.{index}.moe.experts."
        block.moe.experts = ChunkedExperts(
            lambda param, rows: self.source.get(prefix + param, rows=rows),
            num_routed=self.cfg.moe.routed_in_layer(index),
            num_experts=self.cfg.moe.experts_in_layer(index),
            expert_bytes=_expert_fp32_bytes(self.source, prefix),
            keep_slot_norms=keep_slot_norms,
        )
        return block

    def _non_expert_weights(self, index: int) -> dict[str, torch.Tensor]:
        # The experts stay unallocated placeholders: a caller runs them some other way, or never.
        weights = {}
        for name in block_names(self.source, index):
            if ".moe.experts." in name:
                weights[name] = torch.empty(self.source.shape(name), device="meta")
            else:
                weights[name] = self.source.get(name)
        return relative(weights, index)


def _expert_fp32_bytes(source: WeightSource, prefix: str) -> int:
    per_expert = 0
    for param in ChunkedExperts.PARAMS:
        shape = source.shape(prefix + param)
        per_expert += torch.Size(shape[1:]).numel() * COMPUTE_DTYPE.itemsize
    return per_expert


class ChunkedExperts(nn.Module):
    """Stands in for a layer's `Experts` (same forward) without holding them all: the shared
    experts, then each chunk of routed experts that some token chose, are read, upcast, run and
    dropped. Each chosen (token, expert) slot runs as its own one-expert token with weight 1, so
    the expert's own output is at hand; with `keep_slot_norms`, |E_i(x_t)| of every slot of the
    last forward is kept as `slot_norms_TK` (EASY-EP weighs experts by it)."""

    PARAMS = ("w1", "w2", "w3")

    def __init__(
        self,
        read: Callable[[str, list[int]], torch.Tensor],
        *,
        num_routed: int,
        num_experts: int,
        expert_bytes: int,
        keep_slot_norms: bool = False,
    ):
        super().__init__()
        self.read = read
        self.num_routed, self.num_experts = num_routed, num_experts
        self.chunk_size = max(1, EXPERT_CHUNK_BYTES // expert_bytes)
        self.keep_slot_norms = keep_slot_norms
        self.slot_norms_TK: torch.Tensor | None = None

    def _experts(self, ids: list[int], num_shared: int) -> Experts:
        weights = {param: self.read(param, ids).to(COMPUTE_DTYPE) for param in self.PARAMS}
        hidden, d_model = weights["w1"].shape[1:]
        with torch.device("meta"):
            experts = Experts(len(ids), num_shared, d_model, hidden)
        experts.load_state_dict(weights, assign=True)
        return experts

    def forward(
        self, x_TD: torch.Tensor, experts_TK: torch.Tensor | None = None, weights_TK: torch.Tensor | None = None
    ) -> torch.Tensor:
        r, num_shared = self.num_routed, self.num_experts - self.num_routed
        shared_ids = list(range(r, self.num_experts))
        out_TD = self._experts(shared_ids, num_shared)(x_TD) if num_shared else torch.zeros_like(x_TD)
        if experts_TK is None:
            return out_TD
        num_tokens, top_k = experts_TK.shape
        slots_N, weights_N = experts_TK.flatten(), weights_TK.flatten()
        token_N = torch.arange(num_tokens).repeat_interleave(top_k)
        norms_N = torch.zeros(slots_N.shape[0], dtype=x_TD.dtype)
        for start in range(0, r, self.chunk_size):
            end = min(start + self.chunk_size, r)
            in_N = (slots_N >= start) & (slots_N < end)
            if not in_N.any():
                continue  # no token chose these experts: nothing to read
            local_N1 = (slots_N[in_N] - start)[:, None]
            y_ND = self._experts(list(range(start, end)), 0)(x_TD[token_N[in_N]], local_N1, torch.ones_like(
                local_N1, dtype=x_TD.dtype
            ))
            norms_N[in_N] = y_ND.norm(dim=-1)
            out_TD.index_add_(0, token_N[in_N], y_ND * weights_N[in_N, None])
        if self.keep_slot_norms:
            self.slot_norms_TK = norms_N.view(num_tokens, top_k)
        return out_TD


@contextlib.contextmanager
def capture(module: nn.Module) -> Iterator[list[tuple[tuple, object]]]:
    """Collect (inputs, output) of every forward of `module` inside the block."""
    captured: list = []

    def hook(module: nn.Module, args, output) -> None:
        captured.append((args, output))

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class Replay(nn.Module):
    """Stands in for a module whose outputs on the coming forwards are known already, in order.

    Layerwise selection runs a layer's attention to measure its router, then the pruned layer on
    the same inputs with the same attention weights: the pruned block replays the outputs instead
    of computing them again (a fifth of the layer's compute)."""

    def __init__(self, outputs: list[torch.Tensor]):
        super().__init__()
        self.outputs = collections.deque(outputs)

    def forward(self, *args) -> torch.Tensor:
        return self.outputs.popleft()
