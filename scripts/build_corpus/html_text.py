"""HTML to plain text: the readable body of a help or handbook page, one paragraph per block."""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Page chrome (navigation, scripts, search boxes, debug footers) that repeats on every page.
_SKIP_TAGS = frozenset("script style head nav header footer aside noscript button form select title".split())
_SKIP_CLASSES = frozenset({"docnav", "toc", "indexterm", "debug", "navheader", "navfooter"})
_SKIP_IDS = frozenset({"banner", "title", "DEBUG", "SearchFrame", "DonationFrame"})
_BLOCK_TAGS = frozenset(
    "p div h1 h2 h3 h4 h5 h6 li dt dd tr table ul ol dl section article blockquote pre br hr caption".split()
)
_VOID_TAGS = frozenset("area base br col embed hr img input link meta source track wbr".split())
_BLANKS = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._buffer: list[str] = []
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._pre_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            self._skip_depth += tag == self._skip_tag
            return
        if tag not in _VOID_TAGS and _is_chrome(tag, dict(attrs)):
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag == "pre":
            self._pre_depth += 1
        elif tag in ("td", "th"):
            self._buffer.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in _BLOCK_TAGS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            self._skip_depth -= tag == self._skip_tag
            if self._skip_depth == 0:
                self._skip_tag = None
            return
        if tag in _BLOCK_TAGS:
            self._flush()
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self._buffer.append(data)

    def _flush(self) -> None:
        text = "".join(self._buffer)
        self._buffer = []
        if self._pre_depth:
            text = "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))
        else:
            text = _BLANKS.sub(" ", text).strip()
        if text.strip():
            self.paragraphs.append(text)

    def close(self) -> None:
        super().close()
        self._flush()


def _is_chrome(tag: str, attrs: dict[str, str | None]) -> bool:
    classes = set((attrs.get("class") or "").split())
    return tag in _SKIP_TAGS or bool(classes & _SKIP_CLASSES) or attrs.get("id") in _SKIP_IDS


def html_to_text(html: str) -> str:
    """The page's text without navigation and scripts; blocks are separated by blank lines.

    Whitespace inside `<pre>` is kept; elsewhere it is squeezed to single spaces.
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return "\n\n".join(parser.paragraphs)
