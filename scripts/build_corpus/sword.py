"""Read a SWORD zText Bible module (as Debian's `sword-text-*` packages ship it) without libsword.

A zText module with `BlockType=BOOK` stores each book of the Bible as one zlib block. The
`.bzs` index holds one (offset, compressed size, size) triple of little-endian uint32 per
block; the `.bzz` file holds the blocks. The text is OSIS XML, turned into prose here.
"""

from __future__ import annotations

import html
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

_BLOCK_ENTRY = struct.Struct("<III")
_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title>", re.S)
_CHAPTER = re.compile(r'<chapter\b[^>]*\bn="(\d+)"[^>]*/>')
_PARAGRAPH = re.compile(r'<div\b(?=[^>]*\stype="x-p")(?=[^>]*\ssID=)[^>]*/>')
_TAG = re.compile(r"<[^>]+>")


def read_books(module_dir: Path) -> Iterator[tuple[str, str]]:
    """Yield (testament/block label, OSIS text) for every non-empty block, OT first."""
    for testament in ("ot", "nt"):
        index_path = module_dir / f"{testament}.bzs"
        if not index_path.exists():
            continue
        index = index_path.read_bytes()
        data = (module_dir / f"{testament}.bzz").read_bytes()
        for number, (offset, size, _) in enumerate(_BLOCK_ENTRY.iter_unpack(index)):
            if size:
                yield f"{testament}{number:02d}", zlib.decompress(data[offset : offset + size]).decode("utf-8")


def osis_to_text(osis: str) -> str:
    """Prose from OSIS: titles and chapter headings on their own lines, notes and tags removed."""
    text = _NOTE.sub("", osis)
    text = _TITLE.sub(lambda m: f"\n\n{m.group(1)}\n\n", text)
    text = _CHAPTER.sub(lambda m: f"\n\nChapter {m.group(1)}\n\n", text)
    text = _PARAGRAPH.sub("\n\n", text)
    text = html.unescape(_TAG.sub("", text)).replace("¶", "")
    paragraphs = (" ".join(p.split()) for p in text.split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)
