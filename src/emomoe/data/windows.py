"""What every verb that reads windows of a token store is configured with: one name, one default
and one meaning for each (the sequence length, the batch size, the held-out windows, and whether
data of another tokenizer than the model's is allowed)."""

from __future__ import annotations

import dataclasses

from emomoe.config import Config, ranged

BATCH_SIZE = 8
"""Rows per forward pass wherever a verb batches (windows, documents, prompts, lm-eval requests).
A loss or a routing statistic does not depend on it; memory does, so it is kept small for CPUs."""
NUM_EVAL_WINDOWS = 64
"""Held-out windows per domain a loss is measured on: a quick estimate by default, everywhere
(eval, sweep, finetune, training's validation); 0 measures the whole validation split."""

@dataclasses.dataclass
class TokenizerCheckConfig(Config):
    """The setting of every verb that runs a model on data, or with a tokenizer given separately."""

    any_tokenizer: bool = False
    """Go ahead even if the data or tokenizer was made with another tokenizer than the model's
    (results are then meaningless unless the text is the same)."""


@dataclasses.dataclass
class WindowConfig(TokenizerCheckConfig):
    seq_len: int | None = ranged(None, ge=1)
    """Tokens per window; None means the model's max_seq_len (with several models, the smallest)."""
    batch_size: int = ranged(BATCH_SIZE, ge=1)
    """Windows per forward pass."""


@dataclasses.dataclass
class HeldOutConfig(WindowConfig):
    num_eval_windows: int = ranged(NUM_EVAL_WINDOWS, ge=0)
    """Held-out windows per domain, evenly spaced; 0 means all of them."""

    @property
    def max_eval_windows(self) -> int | None:
        """`num_eval_windows` as `eval_batches` takes it (None: all)."""
        return self.num_eval_windows or None
