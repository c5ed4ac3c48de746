"""Which packages feed which domain, through which extractor, and how much text each may give.

Budgets are in UTF-8 bytes of cleaned text. A source whose packages hold more than its budget
gives a deterministic sample of whole units (ordered by a hash of their uid), so every part of
the package is equally likely to appear; one that holds less gives everything it has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from build_corpus import extract
from build_corpus.extract import Context, Unit

MB = 1_000_000


@dataclass(frozen=True)
class Source:
    name: str
    domain: str
    packages: tuple[str, ...]
    extract: Callable[[Context], Iterable[Unit]]
    budget_bytes: int
    lang: str | None = None
    """Language filter: with "de" or "zh", drop untranslated English paragraphs and other-language units."""


def _man(
    name: str, domain: str, trees: tuple[tuple[str, str], ...], budget: float, lang: str | None = None, credits: tuple[str, ...] = ()
) -> Source:
    """Man pages from (package, folder) `trees`, rendered with groff; `credits` as in `extract.man_pages`."""
    packages = tuple(dict.fromkeys(package for package, _ in trees))
    read = partial(extract.man_pages, trees=trees, chinese=lang == "zh", credits=credits)
    return Source(name, domain, packages, read, int(budget * MB), lang)


def _html(name: str, domain: str, package: str, folder: str, budget: float, lang: str) -> Source:
    """Every HTML page under `folder` of `package`, as text."""
    read = partial(extract.html_pages, package=package, folder=folder, chinese=lang == "zh")
    return Source(name, domain, (package,), read, int(budget * MB), lang)


_HANDBOOK = "usr/share/doc/debian-handbook/html"
_LO_HELP = "usr/share/libreoffice/help"
_ZH_CREDITS = ("[中文版维护人]", "[中文版最新更新]", "《中国", "译者", "跋")

SOURCES: tuple[Source, ...] = (
    Source("python-stdlib", "code", ("libpython3.11-minimal", "libpython3.11-stdlib"), extract.python_modules, int(5.5 * MB)),
    Source("scancode-licenses", "legal", ("licensedcode-data",), extract.license_texts, int(5.5 * MB)),
    Source("metamath-set.mm", "math", ("metamath-databases",), extract.metamath_sections, int(3.0 * MB)),
    Source("pari-manuals", "math", ("pari-doc",), extract.pari_manuals, int(2.5 * MB)),
    Source("jane-austen", "literature", ("r-cran-janeaustenr",), extract.austen_novels, int(4.5 * MB)),
    Source("bible-kjv", "literature", ("sword-text-kjv",), extract.bible_books, int(1.5 * MB)),
    _man("man-pages-en", "tech-en", (("manpages", "usr/share/man"), ("manpages-dev", "usr/share/man")), 2.5),
    Source("python-docs", "tech-en", ("python3.11-doc",), extract.python_docs, int(3.0 * MB)),
    _man("man-pages-de", "german", (("manpages-de", "usr/share/man/de"),), 2.5, "de", ("ÜBERSETZUNG",)),
    _html("libreoffice-help-de", "german", "libreoffice-help-de", f"{_LO_HELP}/de", 1.8, "de"),
    _html("debian-handbook-de", "german", "debian-handbook", f"{_HANDBOOK}/de-DE", 1.5, "de"),
    _man("man-pages-zh", "chinese", (("manpages-zh", "usr/share/man/zh_CN"),), 2.7, "zh", _ZH_CREDITS),
    _html("libreoffice-help-zh", "chinese", "libreoffice-help-zh-cn", f"{_LO_HELP}/zh-CN", 1.8, "zh"),
    _html("debian-handbook-zh", "chinese", "debian-handbook", f"{_HANDBOOK}/zh-CN", 1.5, "zh"),
)

# Packages needed by the build that give no text themselves.
TOOL_PACKAGES: tuple[str, ...] = ("groff-base",)
