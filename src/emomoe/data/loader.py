"""Training and evaluation batches: fixed-length windows over the packed token stream.

Legend: B batch (sequences), S sequence length (`seq_len`).

The train split of the chosen domains is one packed stream (the store's arrays concatenated in
order, EOS after every document). Window w covers stream tokens [w*S, w*S + S + 1): inputs are
its first S tokens and labels its last S, so neighbouring windows share one token and every
token but the first is a label once per epoch. Windows run across documents and arrays.

Order: the global position g (windows consumed by all ranks together) is window perm_e[g % N] of
epoch e = g // N, where perm_e is a permutation seeded by (seed, e): each epoch reshuffles. A step
consumes world_size * B positions and rank r takes B consecutive ones starting at r * B, so ranks
neither overlap nor skip windows, and the whole state is one integer: a resumed run, even on a
different number of ranks (keeping world_size * B, the global batch), sees exactly the batches it
would have seen.

In every batch, doc_ids_BS[b, s] = the number of EOS strictly before position s in row b (the
EOS ending a document belongs to it), computed by the shared `emomoe.model.docs.doc_ids_from_eos`;
domain_ids_BS[b, s] is the domain of the document token s belongs to.

With `repetition_filter` on, a training window holding a run of some n-gram (n = 1..13) repeated
at least 32 times in a row gets no labels at all: the OLMo-core instance filter of the paper's
runs, which keeps degenerate repeats (tables of zeros, ASCII art) out of the loss. Training batches
mark those windows in `filtered_B`: the loss still counts their tokens (`train.step.loss_denominator`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emomoe.config import Config, ranged
from emomoe.data.store import Shard, Split, TokenStore
from emomoe.errors import ConfigError, DataError
from emomoe.model.docs import doc_ids_from_eos
from emomoe.model.losses import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class DataConfig(Config):
    store: str = ""
    """Token store directory (or mix file) to train on."""
    seq_len: int = ranged(256, ge=1)
    batch_size: int = ranged(16, ge=1)
    """Sequences per rank per micro-batch."""
    seed: int = ranged(0, ge=0)
    """Seeds the window order; the same seed gives the same batches."""
    domains: list[str] | None = None
    """Train only on these domains (None: all)."""
    repetition_filter: bool = False
    """Drop from the loss every training window with an n-gram (n <= 13) repeated >= 32 times in a
    row, as the paper's runs did (spec section 4.1)."""

    def validate(self) -> None:
        if self.domains is not None and (not self.domains or len(set(self.domains)) != len(self.domains)):
            raise ConfigError(f"domains: expected a non-empty list of distinct names or null, got {self.domains}")


class PackedStream:
    """Arrays of one split read as one token sequence, with the domain id of every token."""

    def __init__(self, shards: list[Shard]) -> None:
        self.shards = [s for s in shards if s.num_tokens]
        self.starts = np.cumsum([0] + [s.num_tokens for s in self.shards])
        self.num_tokens = int(self.starts[-1])

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [start, stop) and their domain ids, as int64."""
        tokens = np.empty(stop - start, np.int64)
        domains = np.empty(stop - start, np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            shard = self.shards[i]
            lo = pos - int(self.starts[i])
            hi = min(stop - int(self.starts[i]), shard.num_tokens)
            tokens[pos - start : pos - start + hi - lo] = shard.tokens[lo:hi]
            domains[pos - start : pos - start + hi - lo] = shard.domain
            pos += hi - lo
            i += 1
        return tokens, domains


REPETITION_MAX_PERIOD = 13
REPETITION_MIN_REPEATS = 32


def has_repetition(tokens: np.ndarray, max_period: int = REPETITION_MAX_PERIOD, min_repeats: int = REPETITION_MIN_REPEATS) -> bool:
    """Whether some n-gram with n <= max_period occurs `min_repeats` times back to back in `tokens`.

    For period p, a stretch of length L >= min_repeats * p has tokens[i] == tokens[i + p] at its
    first L - p positions; so look for (min_repeats - 1) * p such matches in a row.
    """
    for period in range(1, max_period + 1):
        run = (min_repeats - 1) * period
        if len(tokens) < run + period:
            break
        same = np.concatenate([[0], np.cumsum(tokens[period:] == tokens[:-period])])
        if (same[run:] - same[:-run] == run).any():
            return True
    return False


def _batch(tokens_BS1: np.ndarray, domains_BS1: np.ndarray, eos_id: int, num_labels_B: np.ndarray) -> Batch:
    """Rows of S+1 tokens -> inputs, labels (beyond num_labels: ignored), doc and domain ids."""
    input_ids_BS = torch.from_numpy(np.ascontiguousarray(tokens_BS1[:, :-1]))
    labels_BS = tokens_BS1[:, 1:].copy()
    labels_BS[np.arange(labels_BS.shape[1])[None, :] >= num_labels_B[:, None]] = IGNORE_INDEX
    return {
        "input_ids_BS": input_ids_BS,
        "labels_BS": torch.from_numpy(labels_BS),
        "doc_ids_BS": doc_ids_from_eos(input_ids_BS, eos_id),
        "domain_ids_BS": torch.from_numpy(np.ascontiguousarray(domains_BS1[:, :-1])),
    }


def _open(store: TokenStore | str | Path) -> TokenStore:
    return store if isinstance(store, TokenStore) else TokenStore.open(store)


class TrainLoader:
    """Infinite, resumable, rank-sharded iterator of training batches (see the module docstring)."""

    def __init__(self, store: TokenStore | str | Path | None, cfg: DataConfig, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.store = _open(cfg.store if store is None else store)
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.stream = PackedStream(self.store.shards(Split.TRAIN, cfg.domains))
        self.num_windows = max(self.stream.num_tokens - 1, 0) // cfg.seq_len
        if self.num_windows == 0:
            which = f" of domains {', '.join(cfg.domains)}" if cfg.domains else ""
            raise DataError(
                f"{self.store.path}: seq_len {cfg.seq_len} is longer than the train data{which} "
                f"({self.stream.num_tokens} tokens; one window needs {cfg.seq_len + 1})"
            )
        self.position = 0
        self._perms: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> int:
        return self.position // self.num_windows

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Batch:
        first = self.position + self.rank * self.cfg.batch_size
        starts = [self._window(g) * self.cfg.seq_len for g in range(first, first + self.cfg.batch_size)]
        rows = [self.stream.read(s, s + self.cfg.seq_len + 1) for s in starts]
        self.position += self.cfg.batch_size * self.world_size
        tokens_BS1 = np.stack([t for t, _ in rows])
        domains_BS1 = np.stack([d for _, d in rows])
        filtered_B = np.array([self.cfg.repetition_filter and has_repetition(row) for row in tokens_BS1], dtype=bool)
        batch = _batch(tokens_BS1, domains_BS1, self.store.eos_id, np.where(filtered_B, 0, self.cfg.seq_len))
        return {**batch, "filtered_B": torch.from_numpy(filtered_B)}

    def _window(self, position: int) -> int:
        epoch, i = divmod(position, self.num_windows)
        if epoch not in self._perms:
            # A batch can straddle two epochs; older permutations are never needed again.
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.cfg.seed, epoch]).permutation(self.num_windows)
        return int(self._perms[epoch][i])

    @property
    def global_batch_size(self) -> int:
        """Windows per micro-batch over all ranks."""
        return self.cfg.batch_size * self.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "seed": self.cfg.seed, "seq_len": self.cfg.seq_len,
                "num_windows": self.num_windows, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off, on any number of ranks that keeps the global batch."""
        mine = self.state_dict()
        for key in ("seed", "seq_len", "num_windows"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"{self.store.path}: cannot resume the data order: saved {key} {state.get(key)} "
                    f"differs from the current {mine[key]} (different store, domains or data config)"
                )
        check_global_batch(state, self.cfg, self.world_size)
        self.position = int(state["position"])


def check_global_batch(state: dict[str, Any], cfg: DataConfig, world_size: int) -> None:
    """ConfigError unless `world_size` processes with `cfg` take micro-batches of as many windows
    as the run that saved `state` (a `TrainLoader.state_dict`) did: otherwise the data order, and
    every loss after it, would change."""
    mine = cfg.batch_size * world_size
    # Absent from states written before runs could resume on another number of ranks.
    saved = state.get("global_batch_size", mine)
    if saved != mine:
        raise ConfigError(
            f"data.batch_size: the checkpoint's micro-batches hold {saved} sequences over all processes, "
            f"this run's {mine} ({world_size} x {cfg.batch_size}); "
            + (f"set data.batch_size={saved // world_size}" if saved % world_size == 0
               else f"run a number of processes that divides {saved}")
        )


def eval_batches(
    store: TokenStore | str | Path,
    split: Split | str = Split.VAL,
    *,
    seq_len: int,
    batch_size: int,
    domains: list[str] | None = None,
    max_windows_per_domain: int | None = None,
) -> Iterator[Batch]:
    """Finite batches covering every token of `split`, domain by domain (one domain per row).

    Each domain's documents are packed and cut like training windows; the last window of a
    domain is padded with EOS and its padded labels are IGNORE_INDEX. `max_windows_per_domain`
    keeps that many evenly spaced windows per domain, for quick estimates. Per-domain loss is
    the CE grouped by `domain_ids_BS`.
    """
    if seq_len < 1 or batch_size < 1 or (max_windows_per_domain is not None and max_windows_per_domain < 1):
        raise ConfigError(
            f"seq_len, batch_size and max_windows_per_domain must be positive, "
            f"got {seq_len}, {batch_size} and {max_windows_per_domain}"
        )
    store = _open(store)
    tokens_rows, domain_rows, num_labels = [], [], []
    found = False
    for name in domains if domains is not None else store.domains:
        stream = PackedStream(store.shards(split, [name]))
        if stream.num_tokens < 2:
            if domains is not None:
                raise DataError(f"{store.path}: domain {name!r} has no {Split(split).value} data to evaluate")
            continue
        found = True
        starts = np.arange(0, stream.num_tokens - 1, seq_len)
        if max_windows_per_domain is not None and len(starts) > max_windows_per_domain:
            starts = starts[np.unique(np.linspace(0, len(starts) - 1, max_windows_per_domain).round().astype(int))]
        for start in starts.tolist():
            stop = min(start + seq_len + 1, stream.num_tokens)
            tokens, doms = stream.read(start, stop)
            pad = seq_len + 1 - len(tokens)
            tokens_rows.append(np.pad(tokens, (0, pad), constant_values=store.eos_id))
            domain_rows.append(np.pad(doms, (0, pad), mode="edge"))
            num_labels.append(len(tokens) - 1)
            if len(tokens_rows) == batch_size:
                yield _batch(np.stack(tokens_rows), np.stack(domain_rows), store.eos_id, np.array(num_labels))
                tokens_rows, domain_rows, num_labels = [], [], []
    if not found:
        raise DataError(f"{store.path}: no {Split(split).value} data to evaluate")
    if tokens_rows:
        yield _batch(np.stack(tokens_rows), np.stack(domain_rows), store.eos_id, np.array(num_labels))
