"""What to generate: how many tokens at most, and how each next token is chosen; and for the
`emomoe generate` verb, where a completion stops, how many prompts run together and which experts
they may use."""

from __future__ import annotations

import dataclasses

from emomoe.checkpoint.selection import SelectionConfig
from emomoe.config import Config, ranged
from emomoe.data.windows import BATCH_SIZE, TokenizerCheckConfig


@dataclasses.dataclass
class GenerationConfig(Config):
    max_new_tokens: int = ranged(64, ge=0)
    """Stop a row after this many new tokens if it has not produced EOS (or a stop) before."""
    greedy: bool = False
    """Always take the most likely token (temperature and top_p are then ignored)."""
    temperature: float = ranged(1.0, ge=0)
    """Logits are divided by it before the softmax; 0 means greedy."""
    top_p: float = ranged(1.0, gt=0, le=1)
    """Sample only from the smallest set of most likely tokens whose probability reaches top_p."""
    seed: int = 0
    """Seed of the draws: the same prompts, model and config give the same tokens."""

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0


@dataclasses.dataclass
class GenerateConfig(GenerationConfig, SelectionConfig, TokenizerCheckConfig):
    """The settings of `emomoe generate`: decoding, plus text-level stops, batching and the
    selection of experts to route to."""

    stop: list[str] = dataclasses.field(default_factory=list)
    """End a completion before any of these strings (they are not part of it)."""
    batch_size: int = ranged(BATCH_SIZE, ge=1)
    """Prompts decoded together, from a file of prompts."""

