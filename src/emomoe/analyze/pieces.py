"""Token ids as text for people to read: single tokens in tables, whole documents split per token.

Works with any tokenizer that has a `decode(ids) -> str`; without one, tokens show as `#id`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"
"""What a decoder shows for bytes that do not (yet) form a whole UTF-8 character."""


class Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


def token_label(decoder: Decoder | None, token_id: int) -> str:
    """One token, with its whitespace made visible (a space shows as ␣, a newline as ⏎)."""
    if decoder is None:
        return f"#{token_id}"
    text = decoder.decode([token_id])
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or f"#{token_id}"


def document_pieces(decoder: Decoder | None, ids: Sequence[int]) -> list[str]:
    """The text each token adds to the decoded document, so that the pieces join to the text.

    Byte-level tokens can end inside a multi-byte character; such a token adds nothing and the
    character goes to the token that completes it.
    """
    if decoder is None:
        return [f"#{i} " for i in ids]
    pieces, done = [], ""
    for end in range(1, len(ids) + 1):
        text = decoder.decode(list(ids[:end]))
        stable = text if end == len(ids) else text.rstrip(REPLACEMENT)
        pieces.append(stable[len(os.path.commonprefix([done, stable])) :])
        done = stable
    return pieces
