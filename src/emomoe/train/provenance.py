"""Where a checkpoint came from: the token store of the run that trained it, and its tokenizer.

Checkpoints do not record their tokenizer, so it is looked for, in this order:
1. in the checkpoint directory itself (`tokenizer.json`, or a `tokenizer/` folder holding one:
   HF-style exports and imports);
2. for a subset (`selection.json`), wherever its source checkpoint finds one;
3. in the token store named by the `config.yaml` of the run directory above the checkpoint
   (`RUN/final`, `RUN/checkpoints/step-N`), which keeps the tokenizer that made it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from emomoe.checkpoint import load_for_inference
from emomoe.checkpoint.selection import lineage
from emomoe.data.store import TOKENIZER_DIR, TokenStore
from emomoe.data.tokenizer import TOKENIZER_FILE, TextTokenizer, load_model_tokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.model import ModelConfig
from emomoe.train.config import RunConfig
from emomoe.train.rundir import CONFIG_FILE as RUN_CONFIG_FILE

_RUN_DIR_LEVELS = 3
"""RUN/final is one level below the run directory, RUN/checkpoints/step-N two."""


def run_store(checkpoint: str | Path) -> Path | None:
    """The token store that the run above `checkpoint` (or above its source) trained on, if it still exists."""
    for source in lineage(Path(checkpoint)):
        for run_dir in list(source.resolve().parents)[:_RUN_DIR_LEVELS]:
            if not (run_dir / RUN_CONFIG_FILE).is_file():
                continue
            try:
                store = RunConfig.from_yaml(run_dir / RUN_CONFIG_FILE).data.store
            except ConfigError:
                continue
            if store and Path(store).exists():
                return Path(store)
    return None


def find_tokenizer(checkpoint: str | Path) -> Path | None:
    """The tokenizer directory or file of `checkpoint` (see the module docstring), or None."""
    for source in lineage(Path(checkpoint)):
        for candidate in (source / TOKENIZER_FILE, source / TOKENIZER_DIR / TOKENIZER_FILE):
            if candidate.is_file():
                return candidate.parent
    store = run_store(checkpoint)
    return TokenStore.open(store).tokenizer_path if store is not None else None


def checkpoint_tokenizer(
    checkpoint: str | Path, cfg: ModelConfig, tokenizer: str | Path | None = None, *, any_tokenizer: bool = False
) -> TextTokenizer:
    """Load `tokenizer` (or the one found for `checkpoint`) and check that the model can run its ids
    and was trained with it (`load_model_tokenizer`)."""
    path = tokenizer if tokenizer is not None else find_tokenizer(checkpoint)
    if path is None:
        raise DataError(
            f"{checkpoint}: no tokenizer found (none in the checkpoint, its source, or its run's token store); "
            "pass --tokenizer DIR"
        )
    return load_model_tokenizer(Path(path), cfg, any_tokenizer=any_tokenizer)


def load_with_tokenizer(
    checkpoint: str | Path, tokenizer: str | Path | None = None, *, any_tokenizer: bool = False
) -> tuple[nn.Module, ModelConfig, TextTokenizer]:
    """The model ready for inference (eval mode, pool-free routing; float32 compute, with the
    weights kept in their stored dtype when float32 ones would not fit), its config and its tokenizer."""
    model, cfg = load_for_inference(checkpoint, dtype="auto")
    return model, cfg, checkpoint_tokenizer(checkpoint, cfg, tokenizer, any_tokenizer=any_tokenizer)
