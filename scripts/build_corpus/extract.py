"""Turn unpacked package trees into units: (uid, normalised text) pairs, in a sorted order.

A unit is the natural whole of a source (a module, a license, a man page, a novel, a book of
the Bible, a section of set.mm); the build later splits long units into documents. A uid is
`package:path` inside the package, plus `::part` when one file holds several units.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from build_corpus import manpages, sword
from build_corpus.clean import (
    cut_at_heading,
    front_matter,
    join_cjk_gaps,
    join_sentence_gaps,
    normalize,
    squeeze_wide_layout,
    strip_front_matter,
    strip_mm_proofs,
    unwrap_paragraphs,
)
from build_corpus.html_text import html_to_text

Unit = tuple[str, str]
_PYTHON_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "encodings", "pydoc_data"})
_PARI_SKIP = frozenset({"pdfmacs.tex", "parimacro.tex", "paricfg.tex", "users.tex"})
_PYDOC_SKIP = frozenset({"whatsnew/changelog.rst.txt", "license.rst.txt", "copyright.rst.txt"})
# set.mm marks its parts, sections and subsections with a comment whose first line is a rule.
_MM_SECTION = re.compile(r"^(?=\$\(\n(?:####|#\*#\*|=-=-))", re.M)
_OSIS_BOOK = re.compile(r'<div\b[^>]*\bosisID="([^"]+)"[^>]*\btype="book"')


@dataclass(frozen=True)
class Context:
    """What extractors need: the unpacked root of every package, and how many jobs to run."""

    roots: dict[str, Path]
    num_jobs: int = 2


def _files(base: Path, pattern: str) -> list[Path]:
    """Regular files under `base` matching `pattern`, in a platform-independent sorted order."""
    found = (p for p in base.rglob(pattern) if p.is_file() and not p.is_symlink())
    return sorted(found, key=lambda p: p.relative_to(base).as_posix())


def _uid(ctx: Context, package: str, path: Path, part: str = "") -> str:
    uid = f"{package}:{path.relative_to(ctx.roots[package]).as_posix()}"
    return f"{uid}::{part}" if part else uid


def _read_utf8(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def python_modules(ctx: Context) -> Iterator[Unit]:
    """Standard library modules, without tests, generated codec tables and pydoc's data dump."""
    for package in ("libpython3.11-minimal", "libpython3.11-stdlib"):
        base = ctx.roots[package] / "usr/lib/python3.11"
        for path in _files(base, "*.py"):
            rel = path.relative_to(base)
            if _PYTHON_SKIP_DIRS & set(rel.parts[:-1]) or rel.name.startswith("_sysconfigdata"):
                continue
            text = _read_utf8(path)
            if text is not None:
                yield _uid(ctx, package, path), normalize(text, max_blank_lines=2)


def license_texts(ctx: Context) -> Iterator[Unit]:
    """ScanCode's full license texts in English, without their YAML front matter."""
    package = "licensedcode-data"
    for path in _files(ctx.roots[package] / "licensedcode/data/licenses", "*.LICENSE"):
        text = _read_utf8(path)
        if text is not None and front_matter(text).get("language", "en") == "en":
            yield _uid(ctx, package, path), normalize(strip_front_matter(text))


def metamath_sections(ctx: Context) -> Iterator[Unit]:
    """set.mm split at its section comments, with every proof replaced by a placeholder."""
    package = "metamath-databases"
    path = ctx.roots[package] / "usr/share/metamath/databases/set.mm"
    text = strip_mm_proofs(path.read_text(encoding="utf-8"))
    for number, section in enumerate(_MM_SECTION.split(text)):
        yield _uid(ctx, package, path, f"section-{number:04d}"), normalize(section)


def pari_manuals(ctx: Context) -> Iterator[Unit]:
    """The LaTeX sources of PARI/GP's user's guide, tutorials and developer guide."""
    package = "pari-doc"
    for path in _files(ctx.roots[package] / "usr/share/pari/doc", "*.tex"):
        text = _read_utf8(path)
        if text is not None and path.name not in _PARI_SKIP and not path.name.startswith("refcard"):
            yield _uid(ctx, package, path), normalize(text)


def _r_unserialize(blob: bytes) -> object:
    import rdata  # a build-only dependency (the `corpus` extra)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that lazy-load blobs have no file header
        return rdata.conversion.convert(rdata.parser.parse_data(blob))


def _r_decompress(blob: bytes) -> bytes:
    """An R lazy-load database entry: 4-byte length, then a method byte for xz/bzip2, or zlib."""
    method = blob[4:5]
    if method == b"Z":
        return lzma.decompress(blob[5:])
    if method == b"2":
        return bz2.decompress(blob[5:])
    return zlib.decompress(blob[4:])


def austen_novels(ctx: Context) -> Iterator[Unit]:
    """Jane Austen's six novels from the R package's lazy-load database, one paragraph per line."""
    package = "r-cran-janeaustenr"
    base = ctx.roots[package] / "usr/lib/R/site-library/janeaustenr/data/Rdata"
    index = _r_unserialize(gzip.decompress(base.with_suffix(".rdx").read_bytes()))
    database = base.with_suffix(".rdb").read_bytes()
    for name, (offset, length) in sorted(index["variables"].items()):
        lines = _r_unserialize(_r_decompress(database[int(offset) : int(offset) + int(length)]))
        text = unwrap_paragraphs(normalize("\n".join(str(line) for line in lines), collapse_spaces=True))
        yield _uid(ctx, package, base.with_suffix(".rdb"), str(name)), text


def bible_books(ctx: Context) -> Iterator[Unit]:
    """The King James Version, one unit per book, without Strong's numbers and footnotes."""
    package = "sword-text-kjv"
    module = ctx.roots[package] / "usr/share/sword/modules/texts/ztext/engKJV2006eb"
    for label, osis in sword.read_books(module):
        book = _OSIS_BOOK.search(osis)
        yield _uid(ctx, package, module, book.group(1) if book else label), normalize(sword.osis_to_text(osis))


def man_pages(
    ctx: Context, trees: tuple[tuple[str, str], ...], chinese: bool = False, credits: tuple[str, ...] = ()
) -> Iterator[Unit]:
    """Man pages under (package, folder) `trees`, rendered with the pinned groff.

    `chinese` enables groff's CJK line breaking; `credits` are the headings of trailing
    translator-credit sections, which are cut.
    """
    paths = [(package, path) for package, folder in trees for path in _files(ctx.roots[package] / folder, "*")]
    texts = manpages.render_all(ctx.roots["groff-base"], [p for _, p in paths], chinese, ctx.num_jobs)
    for (package, path), text in zip(paths, texts, strict=True):
        if text is not None:
            text = cut_at_heading(normalize(squeeze_wide_layout(join_sentence_gaps(text))), credits)
            yield _uid(ctx, package, path), join_cjk_gaps(text) if chinese else text


def python_docs(ctx: Context) -> Iterator[Unit]:
    """The reStructuredText sources of the Python 3.11 documentation."""
    package = "python3.11-doc"
    base = ctx.roots[package] / "usr/share/doc/python3.11/html/_sources"
    for path in _files(base, "*.rst.txt"):
        if path.relative_to(base).as_posix() not in _PYDOC_SKIP:
            text = _read_utf8(path)
            if text is not None:
                yield _uid(ctx, package, path), normalize(text)


def html_pages(ctx: Context, package: str, folder: str, chinese: bool = False) -> Iterator[Unit]:
    """The text of every HTML page under `folder` of `package` (help systems, handbooks)."""
    for path in _files(ctx.roots[package] / folder, "*.html"):
        html = _read_utf8(path)
        if html is not None:
            text = normalize(html_to_text(html))
            yield _uid(ctx, package, path), join_cjk_gaps(text) if chinese else text
