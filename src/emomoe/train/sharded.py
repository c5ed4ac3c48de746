"""The model and optimizer state of an FSDP run, saved and loaded shard by shard with DCP.

No process ever holds more than its own shards: saving, each rank writes the chunks of the
parameters and AdamW moments it owns (`train.shard_files`); loading, DCP asks for the parts of
the saved chunks that the loading rank's shards cover. So a state saved by 4 processes loads into
2, into one process (a plain module), or under DDP. The optimizer's param groups (learning rate,
betas, the names of their parameters) are not tensors: they travel with the trainer state.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from emomoe import distributed
from emomoe.train.parallel import unwrap
from emomoe.train.shard_files import ShardReader, ShardWriter, read_index

MODEL_PREFIX, OPTIMIZER_PREFIX = "model", "optimizer"
"""The two subtrees of the saved state; a tensor is stored under e.g. `model.embed.weight` or
`optimizer.embed.weight.exp_avg`."""


def save_shards(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Write this rank's shards of the model and optimizer into `directory` (a collective: every
    rank calls it with the same existing directory). Returns the optimizer's param groups."""
    model_state, optimizer_state = get_state_dict(unwrap(model), optimizer)
    with _dcp_errors():
        dcp.save(
            {MODEL_PREFIX: model_state, OPTIMIZER_PREFIX: optimizer_state["state"]},
            storage_writer=ShardWriter(directory), no_dist=not distributed.is_distributed(),
        )
    return optimizer_state["param_groups"]


def load_shards(
    directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, param_groups: list[dict[str, Any]]
) -> None:
    """Fill `model` and `optimizer` (wrapped as this run wraps them, at any world size) from what
    `save_shards` wrote, and `param_groups` from the trainer state (a collective)."""
    plain = unwrap(model)
    # Asking for the state builds the optimizer's moments (a zero-gradient step at learning rate
    # 0), so there are tensors to load into.
    model_state, optimizer_state = get_state_dict(plain, optimizer)
    reader = ShardReader(directory, read_index(directory))
    with _dcp_errors():
        dcp.load(
            {MODEL_PREFIX: model_state, OPTIMIZER_PREFIX: optimizer_state["state"]},
            storage_reader=reader, no_dist=not distributed.is_distributed(),
        )
    set_state_dict(
        plain, optimizer, model_state_dict=model_state,
        optim_state_dict={"state": optimizer_state["state"], "param_groups": param_groups},
    )


@contextlib.contextmanager
def _dcp_errors() -> Iterator[None]:
    """Re-raise one rank's own error from DCP's CheckpointException (a BaseException bundling every
    rank's), so that a full disk or a damaged file stays a one-line error. Also silence DCP's
    warning that one process means a single-process load: it does."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            yield
    except CheckpointException as e:
        if not e.failures:
            raise
        raise next(iter(e.failures.values()))[0] from None
