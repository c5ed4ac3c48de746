"""The corpus builder's pure parts: cleaning, splitting, markup stripping, selection, output.

The full build needs apt and downloads, so it is not run here; every step it chains is.
"""

from __future__ import annotations

import json
import random
import re
import struct
import sys
import unicodedata
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from build_corpus import build, clean, sword  # noqa: E402
from build_corpus.html_text import html_to_text  # noqa: E402
from build_corpus.pins import PACKAGES  # noqa: E402
from build_corpus.sources import SOURCES, TOOL_PACKAGES  # noqa: E402

from emomoe.data import corpus  # noqa: E402

_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)
_PROSE = st.lists(
    st.text(st.sampled_from(list("abcdé 漢字\n")), min_size=1, max_size=60), min_size=1, max_size=40
).map(lambda parts: "\n\n".join(parts))


# --- normalize ------------------------------------------------------------------------------


@given(_TEXT, st.integers(0, 3), st.booleans())
def test_normalize_is_idempotent_nfc_and_single_line_break(text, max_blank, collapse):
    out = clean.normalize(text, max_blank_lines=max_blank, collapse_spaces=collapse)
    assert clean.normalize(out, max_blank_lines=max_blank, collapse_spaces=collapse) == out
    assert unicodedata.is_normalized("NFC", out)
    assert out.splitlines() == out.split("\n") or out == ""
    assert "\n" * (max_blank + 2) not in out
    assert all(line == line.rstrip() for line in out.split("\n"))


def test_normalize_examples():
    text = "\ufeffCafe\u0301 \t\r\nline\u2028two\x00  \n\n\n\n  indented"
    assert clean.normalize(text) == "Café\nline\ntwo\n\n  indented"
    assert clean.normalize(text, max_blank_lines=2) == "Café\nline\ntwo\n\n\n  indented"
    assert clean.normalize("a  \t b\n   c", collapse_spaces=True) == "a b\nc"


# --- split_document -------------------------------------------------------------------------


def _squash(text: str) -> str:
    return "".join(text.split())


@settings(max_examples=200)
@given(_PROSE, st.integers(10, 400))
def test_split_keeps_all_text_in_order_and_respects_the_limit(text, max_chars):
    text = clean.normalize(text)
    parts = clean.split_document(text, max_chars)
    assert all(0 < len(p) <= max_chars for p in parts)
    assert "".join(_squash(p) for p in parts) == _squash(text)
    assert clean.split_document(text, max_chars) == parts


def test_split_cuts_only_at_paragraphs_when_it_can():
    rng = random.Random(0)
    paragraphs = ["".join(rng.choice("abc ") for _ in range(rng.randint(20, 90))).strip() or "x" for _ in range(200)]
    text = "\n\n".join(paragraphs)
    parts = clean.split_document(text, 1000)
    assert sum(len(p.split("\n\n")) for p in parts) == len(paragraphs)
    assert min(len(p) for p in parts) > 1000 / 3  # about equal parts, no stub at the end
    assert [q for p in parts for q in p.split("\n\n")] == paragraphs


def test_split_short_text_is_untouched_and_blank_text_gives_nothing():
    assert clean.split_document("  code\n\n\tmore", 100) == ["  code\n\n\tmore"]
    assert clean.split_document(" \n ", 100) == []


# --- markup and boilerplate -----------------------------------------------------------------


def test_front_matter_is_read_and_stripped():
    text = "---\nkey: mit\nlanguage: de\nother_urls:\n    - http://x\n---\n\nPermission is granted"
    assert clean.front_matter(text) == {"key": "mit", "language": "de", "other_urls": ""}
    assert clean.strip_front_matter(text) == "\nPermission is granted"
    assert clean.strip_front_matter("no --- front matter") == "no --- front matter"


def test_mm_proofs_are_replaced_and_statements_kept():
    mm = "$( comment $)\n th1 $p |- ph $=\n ( wi ax-mp ) ABCDE $.\n th2 $p |- ps $= ? $.\n ax1 $a |- ch $."
    out = clean.strip_mm_proofs(mm)
    assert out == "$( comment $)\n th1 $p |- ph $= ... $.\n th2 $p |- ps $= ... $.\n ax1 $a |- ch $."


def test_cut_at_heading_drops_translator_credits():
    page = "NAME\n       ls\n\nÜBERSETZUNG\n       Die deutsche Übersetzung ..."
    assert clean.cut_at_heading(page, ("ÜBERSETZUNG",)) == "NAME\n       ls"
    assert clean.cut_at_heading(page, ()) == page
    assert clean.cut_at_heading("  ÜBERSETZUNG indented", ("ÜBERSETZUNG",)) == "  ÜBERSETZUNG indented"


def test_layout_fixes():
    assert clean.join_cjk_gaps("中文 文本，  好 a 字") == "中文文本，好 a 字"
    assert clean.join_sentence_gaps("End.  Next  word") == "End. Next  word"
    assert clean.squeeze_wide_layout("│a" + " " * 40 + "│b\n┌" + "─" * 50 + "┐") == "│a    │b\n┌───┐"
    assert clean.unwrap_paragraphs("one\ntwo\n\nthree") == "one two\n\nthree"


# --- language filters -----------------------------------------------------------------------

_EN = "This is the text that you should use for the configuration of the system."
_DE = "Dies ist der Text, den Sie für die Konfiguration des Systems verwenden können, wenn es nicht anders geht."
_ZH = "这是用于配置系统的文本，如果没有其他办法，您可以使用它。"


def test_untranslated_english_paragraphs_are_dropped():
    assert clean.drop_untranslated(f"{_DE}\n\n{_EN}\n\n-a, --all", "de") == f"{_DE}\n\n-a, --all"
    assert clean.drop_untranslated(f"{_ZH}\n\n{_EN}\n\nls -l", "zh") == f"{_ZH}\n\nls -l"
    assert clean.is_language(_DE * 2, "de") and not clean.is_language(_EN * 2, "de")
    assert clean.is_language(_ZH, "zh") and not clean.is_language(_EN, "zh")


# --- HTML, OSIS, SWORD ----------------------------------------------------------------------


def test_html_to_text_keeps_content_and_drops_chrome():
    html = """<html><head><title>T</title><script>var x = 1;</script></head><body>
    <header><p>Site header</p></header><ul class="docnav top"><li>Prev</li></ul>
    <div id="DisplayArea"><h1>Title &amp; more</h1><p>First   paragraph
    wraps.</p><div class="x"><div class="toc"><div>nested toc</div></div>Kept <b>bold</b></div>
    <pre>  indented
      code</pre><a class="indexterm"/><p>Last</p></div><footer>Foot</footer></body></html>"""
    assert html_to_text(html) == "Title & more\n\nFirst paragraph wraps.\n\nKept bold\n\n  indented\n      code\n\nLast"


def test_osis_to_text():
    osis = (
        '<div osisID="Gen" type="book"/><title type="main">The Book</title><chapter n="1" osisID="Gen.1"/>'
        '<div sID="p1" type="x-p"/>In the <w lemma="strong:H7225">beginning</w> God.'
        '<note placement="foot">Heb. note</note> ¶ And &amp; so. <div eID="p1" type="x-p"/>'
    )
    assert sword.osis_to_text(osis) == "The Book\n\nChapter 1\n\nIn the beginning God. And & so."


def test_read_books_decodes_a_ztext_module(tmp_path):
    books = ["<title>One</title>", "", "<title>Two</title> text"]
    index, data = b"", b""
    for book in books:
        blob = zlib.compress(book.encode()) if book else b""
        index += struct.pack("<III", len(data), len(blob), len(book))
        data += blob
    (tmp_path / "ot.bzs").write_bytes(index)
    (tmp_path / "ot.bzz").write_bytes(data)
    assert list(sword.read_books(tmp_path)) == [("ot00", books[0]), ("ot02", books[2])]


# --- selection and output -------------------------------------------------------------------


def _units(num: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"pkg:file{i:03d}", f"unit {i} " + "word " * rng.randint(40, 200)) for i in range(num)]


@given(st.randoms(use_true_random=False), st.integers(0, 20_000))
def test_selection_ignores_input_order_and_respects_the_budget(rng, budget):
    units = _units(60, 1)
    shuffled = units[:]
    rng.shuffle(shuffled)
    first = build.select_units(units, budget, None, set())
    second = build.select_units(shuffled, budget, None, set())
    assert first.units == second.units == sorted(first.units)
    sizes = [len(t.encode()) for _, t in first.units]
    assert sum(sizes) - max(sizes, default=0) < budget or not sizes
    assert sum(sizes) >= budget or len(first.units) == len(units)


def test_selection_drops_short_duplicate_and_foreign_units():
    long_de = "\n\n".join([_DE] * 3)
    units = [("a:1", "short"), ("a:2", long_de), ("a:3", long_de), ("a:4", "\n\n".join([_EN] * 5))]
    seen: set[str] = set()
    selection = build.select_units(units, 10**9, "de", seen)
    assert [uid for uid, _ in selection.units] in (["a:2"], ["a:3"])
    s = selection.stats
    assert (s.num_units_seen, s.num_units_too_short, s.num_units_wrong_language, s.num_units_duplicate) == (4, 1, 1, 1)
    again = build.select_units([("b:1", long_de)], 10**9, "de", seen)
    assert again.units == [] and again.stats.num_units_duplicate == 1


def test_unit_documents_are_numbered_only_when_split():
    assert build.unit_documents("p:f", "short", 100) == [("p:f", "short")]
    docs = build.unit_documents("p:f", "\n\n".join(["x" * 60] * 4), 100)
    assert [name for name, _ in docs] == ["p:f#1", "p:f#2", "p:f#3", "p:f#4"]


def test_written_corpus_reads_back_through_the_loader(tmp_path, monkeypatch):
    records = [
        {"text": t, "domain": d, "source": f"pkg:{i}"}
        for i, (t, d) in enumerate([("print('x')\n", "code"), ("中文\u2028文本", "chinese"), ('"quoted"', "legal")])
    ]
    records[1]["text"] = clean.normalize(records[1]["text"])
    stats = {s.name: build.SourceStats() for s in SOURCES}
    manifest = build.write_outputs(tmp_path, records, stats)
    monkeypatch.setattr(corpus, "embedded_corpus_path", lambda: tmp_path / corpus.CORPUS_FILENAME)
    assert list(corpus.embedded_corpus()) == records
    assert corpus.embedded_manifest() == manifest
    assert (tmp_path / build.LICENSES_FILENAME).read_text() == build.licenses_note()
    first = (tmp_path / corpus.CORPUS_FILENAME).read_bytes()
    build.write_outputs(tmp_path, records, stats)
    assert (tmp_path / corpus.CORPUS_FILENAME).read_bytes() == first
    assert json.loads(zstandard.ZstdDecompressor().decompress(first).decode().split("\n")[1]) == records[1]


def test_sources_cover_every_domain_with_pinned_packages():
    assert {s.domain for s in SOURCES} == set(corpus.DOMAINS)
    for source in SOURCES:
        for name in source.packages:
            assert re.fullmatch(r"[0-9a-f]{64}", PACKAGES[name].sha256), name
    assert set(TOOL_PACKAGES) <= set(PACKAGES)
    note = build.licenses_note()
    assert all(f"`{name}`" in note for name in PACKAGES)


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_pinned_filenames_follow_the_download_tools(name):
    package = PACKAGES[name]
    assert ":" not in package.filename
    assert package.filename.endswith(".whl" if package.kind == "wheel" else f"_{package.arch}.deb")
