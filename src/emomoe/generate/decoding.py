"""Token generation with a KV cache, for a batch of prompts of different lengths.

The prompts are left-padded into one batch and run through the model once; after that every
step feeds one token per row. A row stops at EOS, when `stop` says so, or after
`max_new_tokens`; the batch stops when every row has.

Legend: B batch rows, S sequence (the longest prompt), V vocab.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator, Sequence

import torch

from emomoe.errors import ConfigError
from emomoe.generate.config import GenerationConfig
from emomoe.generate.sampling import next_tokens

StopFn = Callable[[int, list[int]], bool]
"""stop(row, tokens generated so far) -> True to end that row (e.g. on a stop string)."""


class FinishReason(enum.StrEnum):
    EOS = "eos"
    """The row produced EOS (not included in its tokens)."""
    LENGTH = "length"
    """The row reached max_new_tokens."""
    STOP = "stop"
    """The caller's stop function ended the row."""


@dataclasses.dataclass
class Completion:
    tokens: list[int] = dataclasses.field(default_factory=list)
    """New tokens so far, without the EOS that ended them."""
    finish_reason: FinishReason | None = None
    """None while the row is still generating."""


def stream(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    *,
    eos_id: int | None = None,
    stop: StopFn | None = None,
) -> Iterator[list[Completion]]:
    """Yield the completions of all rows (updated in place) after every decoding step.

    The model must be an `EmoTransformer` in eval mode with pool-free routing (see
    `emomoe.checkpoint.load_for_inference`).
    """
    cfg.check()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start an empty prompt with EOS)")
    completions = [Completion() for _ in prompts]
    if cfg.max_new_tokens == 0:
        for c in completions:
            c.finish_reason = FinishReason.LENGTH
        yield completions
        return
    longest = max(len(p) for p in prompts)
    max_len = model.cfg.max_seq_len
    if longest + cfg.max_new_tokens > max_len:
        raise ConfigError(
            f"max_new_tokens: a prompt of {longest} tokens + {cfg.max_new_tokens} new tokens "
            f"exceeds the model's max_seq_len {max_len}"
        )
    device = model.embed.weight.device
    ids_BS = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    valid_BS = torch.zeros(len(prompts), longest, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        ids_BS[row, longest - len(prompt) :] = torch.as_tensor(list(prompt), device=device)
        valid_BS[row, longest - len(prompt) :] = True
    generator = None if cfg.is_greedy else torch.Generator(device=device).manual_seed(cfg.seed)
    with torch.inference_mode():
        cache = model.new_cache(len(prompts), longest + cfg.max_new_tokens)
        logits_BV = model.decode(ids_BS, cache, valid_BS, last=True)[:, -1]
        for step in range(cfg.max_new_tokens):
            tokens_B = next_tokens(logits_BV, cfg, generator)
            for row, token in enumerate(tokens_B.tolist()):
                _advance(completions[row], row, token, eos_id, stop, last_step=step == cfg.max_new_tokens - 1)
            yield completions
            if all(c.finish_reason is not None for c in completions):
                return
            logits_BV = model.decode(tokens_B[:, None], cache)[:, 0]


def _advance(
    completion: Completion, row: int, token: int, eos_id: int | None, stop: StopFn | None, *, last_step: bool
) -> None:
    if completion.finish_reason is not None:
        return
    if token == eos_id:
        completion.finish_reason = FinishReason.EOS
        return
    completion.tokens.append(token)
    if stop is not None and stop(row, completion.tokens):
        completion.finish_reason = FinishReason.STOP
    elif last_step:
        completion.finish_reason = FinishReason.LENGTH


def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    *,
    eos_id: int | None = None,
    stop: StopFn | None = None,
) -> list[Completion]:
    """The finished completions of every prompt (see `stream`)."""
    completions: list[Completion] = []
    for completions in stream(model, prompts, cfg, eos_id=eos_id, stop=stop):
        pass
    return completions
