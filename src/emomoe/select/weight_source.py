"""Where selection reads weights from: a checkpoint on disk or a model in memory, one interface.

`emomoe.checkpoint.CheckpointReader` reads tensors by name from (sharded, memory-mapped)
safetensors in their stored dtype; `ModelWeights` hands out a model's tensors the same way. The
selection code sees only a `WeightSource`, so the in-memory case runs the same code as a
checkpoint larger than RAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from emomoe.model import ModelConfig


class WeightSource(Protocol):
    config: ModelConfig

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> torch.dtype: ...

    def get(self, name: str, rows: Sequence[int] | None = None) -> torch.Tensor:
        """The tensor in its stored dtype; `rows` picks indices along dim 0 (and reads only those)
        into a new tensor. Without `rows`, it may be a view of the source's own memory."""
        ...

    def close(self) -> None:
        """Let go of file mappings; later reads reopen them. Pages read through a mapping count as
        this process's memory while it stays mapped, so a walk over a big checkpoint calls this
        after each block (tensors it still holds keep their own file mapped)."""
        ...


class ModelWeights:
    """A model's persistent tensors (its state dict) as a `WeightSource`."""

    def __init__(self, model: nn.Module, cfg: ModelConfig):
        self.config = cfg
        self._state = model.state_dict()

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._state[name].dtype

    def get(self, name: str, rows: Sequence[int] | None = None) -> torch.Tensor:
        tensor = self._state[name].detach()
        if rows is None:
            return tensor
        return tensor.index_select(0, torch.as_tensor(list(rows), dtype=torch.long))

    def close(self) -> None:
        pass  # nothing is mapped
