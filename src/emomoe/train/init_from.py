"""`train.init_from`: start a run from another model's weights (warm starts, the EMO anneal).

Only the weights come from the checkpoint: the optimizer, LR schedule, data order and pool draws
start fresh, unlike `--resume`. Training-time behaviour may differ from the source model's (the
router's pool, load balancing and loss weights, the attention mask), the architecture may not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from emomoe.checkpoint import CheckpointReader, load_config
from emomoe.errors import ConfigError
from emomoe.model.config import ModelConfig
from emomoe.train.rundir import first_difference

MAY_DIFFER = (
    "moe.router.pool", "moe.router.eval_pool", "moe.router.lb_scope", "moe.router.bias_update_rate",
    "loss", "doc_attention_mask", "max_seq_len", "eos_id", "init_std",
)
"""Model fields that do not describe the weights (dotted, relative to `model`)."""
OPTIONAL_BUFFERS = ("score_bias_E",)
"""Router balancing biases: absent unless bias balancing is on; a missing one starts at zero."""


def architecture(cfg: ModelConfig) -> dict[str, Any]:
    """The config as a dict without the fields in MAY_DIFFER."""
    tree = cfg.to_dict()
    for dotted in MAY_DIFFER:
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node[key]
        node.pop(leaf)
    return tree


def check_architecture(cfg: ModelConfig, checkpoint: str | Path, field: str = "train.init_from") -> None:
    """Raise ConfigError (DataError if unreadable) unless `checkpoint` holds a model of `cfg`'s
    architecture; `field` names the setting that gave it."""
    source_cfg = load_config(checkpoint)
    difference = first_difference(architecture(source_cfg), architecture(cfg))
    if difference:
        raise ConfigError(
            f"{field}: {checkpoint} holds a different architecture: model.{difference} is "
            f"{_lookup(source_cfg.to_dict(), difference)!r} there, {_lookup(cfg.to_dict(), difference)!r} here"
        )


def load_initial_weights(model: nn.Module, cfg: ModelConfig, checkpoint: str | Path) -> None:
    """Copy `checkpoint`'s weights into `model` (built from `cfg`); ConfigError if they do not fit."""
    check_architecture(cfg, checkpoint)
    with CheckpointReader(checkpoint) as reader:
        load_weights(model, reader.state_dict(), f"train.init_from: {checkpoint}")


def load_weights(model: nn.Module, state: dict[str, Any], source: str) -> None:
    """Load `state` into `model`, tolerating absent or extra `OPTIONAL_BUFFERS`; ConfigError naming
    `source` if another parameter is missing or extra."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    stray = [k for k in [*missing, *unexpected] if not k.endswith(OPTIONAL_BUFFERS)]
    if stray:
        raise ConfigError(f"{source} does not fit the model: parameter {stray[0]} is missing or extra")


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree
