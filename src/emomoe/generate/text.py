"""Generation from text prompts to text, with stop strings and text streamed as it is produced.

A byte-level BPE token can end in the middle of a UTF-8 character, so the newest text is held
back while it ends in an incomplete character (decoded as U+FFFD).

With several selections of experts to choose from (`Selections`, auto), each prompt runs with the
one its first tokens choose; the prompts of each selection decode together, as a batch of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from emomoe.data.tokenizer import TextTokenizer
from emomoe.generate.config import GenerationConfig
from emomoe.generate.decoding import FinishReason, stream
from emomoe.model.selection import Selections

_INCOMPLETE = "\ufffd"


@dataclasses.dataclass
class TextCompletion:
    text: str
    """The generated text, cut before the first stop string."""
    num_tokens: int
    finish_reason: FinishReason
    selection: str | None = None
    """The selection of experts it was generated with, if any."""


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    cut = min((i for s in stop_strings if s and (i := text.find(s)) >= 0), default=None)
    return (text, False) if cut is None else (text[:cut], True)


class TextStream:
    """The text of one row's growing token sequence, handed out piece by piece.

    What is handed out never changes afterwards: the newest text is held back while it ends in
    an incomplete character or could be the start of a stop string.
    """

    def __init__(self, tokenizer: TextTokenizer, stop_strings: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        self._hold_back = max((len(s) for s in self.stop_strings), default=1) - 1
        self.emitted = ""

    def text(self, tokens: Sequence[int]) -> tuple[str, bool]:
        """The decoded text up to the first stop string, and whether there was one."""
        return cut_at_stop(self.tokenizer.decode(tokens), self.stop_strings)

    def update(self, tokens: Sequence[int], final: bool = False) -> str:
        """The text that `tokens` add to what was handed out so far."""
        text, stopped = self.text(tokens)
        if not (final or stopped):
            text = text.rstrip(_INCOMPLETE)
            text = text[: max(len(self.emitted), len(text) - self._hold_back)]
        if len(text) <= len(self.emitted):
            return ""
        new, self.emitted = text[len(self.emitted) :], text
        return new


def prompt_tokens(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; an empty prompt starts from EOS, the boundary every document follows."""
    return tokenizer.encode(prompt) or [tokenizer.eos_id]


def generate_text(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    prompts: Sequence[str | Sequence[int]],
    cfg: GenerationConfig,
    *,
    stop_strings: Sequence[str] = (),
    on_text: Callable[[int, str], None] | None = None,
    selections: Selections | None = None,
) -> list[TextCompletion]:
    """Generate a completion for every prompt (text, or tokens already encoded); `on_text(row,
    piece)` receives each row's text as it grows. With `selections`, every prompt runs with the
    selection in force, or with `auto` the one its first tokens choose.

    A row ends at EOS, at `cfg.max_new_tokens`, or once its text contains a stop string (the
    string and what follows are neither part of the completion nor streamed).
    """
    token_prompts = [prompt_tokens(tokenizer, p) if isinstance(p, str) else p for p in prompts]
    if selections is None:
        return _generate(model, tokenizer, token_prompts, cfg, stop_strings, on_text)
    done: list[TextCompletion | None] = [None] * len(token_prompts)
    for name, rows in selections.groups(token_prompts).items():

        def on_row_text(row: int, piece: str, rows: list[int] = rows) -> None:
            on_text(rows[row], piece)

        with selections.using(name):
            group = [token_prompts[row] for row in rows]
            completions = _generate(model, tokenizer, group, cfg, stop_strings, on_row_text if on_text else None)
        for row, completion in zip(rows, completions):
            done[row] = dataclasses.replace(completion, selection=name)
    return done


def _generate(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    token_prompts: list[Sequence[int]],
    cfg: GenerationConfig,
    stop_strings: Sequence[str],
    on_text: Callable[[int, str], None] | None,
) -> list[TextCompletion]:
    """`generate_text` of token prompts, all with the model as it routes now."""
    streams = [TextStream(tokenizer, stop_strings) for _ in token_prompts]

    def stop(row: int, tokens: list[int]) -> bool:
        return streams[row].text(tokens)[1]

    completions = []
    for completions in stream(model, token_prompts, cfg, eos_id=tokenizer.eos_id, stop=stop if stop_strings else None):
        for row, c in enumerate(completions):
            piece = streams[row].update(c.tokens, final=c.finish_reason is not None)
            if piece and on_text is not None:
                on_text(row, piece)
    return [
        TextCompletion(streams[row].text(c.tokens)[0], len(c.tokens), c.finish_reason)
        for row, c in enumerate(completions)
    ]
