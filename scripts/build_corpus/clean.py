"""Pure text cleaning: normalisation, markup stripping, language filters and document splitting.

Everything here is a deterministic function of its arguments, so two builds from the same
package files give byte-identical corpora.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata

# Characters that would break a JSON-lines reader that splits on Unicode line boundaries, or that
# carry no text: they become "\n" or vanish before anything else looks at the text.
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_INVISIBLE = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\u200b\ufeff]")
_SPACE_RUN = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_SENTENCE_GAP = re.compile(r"(?<=[.!?]) {2}(?=\S)")
_WIDE_GAP = re.compile(r"(?<=\S) {8,}(?=\S)")
_LONG_RULE = re.compile(r"([─━═])\1{3,}")
_CJK = "\u2e80-\u2fff\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK_GAP = re.compile(f"(?<=[{_CJK}]) +(?=[{_CJK}])")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_LATIN_LETTER = re.compile(r"[A-Za-zÀ-ÖØ-öø-ÿ]")
_WORD = re.compile(r"[^\W\d_]+")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_MM_PROOF = re.compile(r"\$=.*?\$\.", re.S)

# Function words: frequent, short and rarely shared between the two languages, so their counts
# tell an untranslated English paragraph from a German one without a language model.
ENGLISH_WORDS = frozenset(
    "the and of to is that for with this are be by or if can from which you it not when these "
    "should must used use has have was were their they there been such only also more than".split()
)
GERMAN_WORDS = frozenset(
    "der die das und ist nicht mit von zu den für ein eine einen werden wird auf sich im des dem "
    "bei oder als wenn kann sie es auch nur wie diese einer können wurde sind zum zur über".split()
)


def sha256_hex(data: str | bytes) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def normalize(text: str, *, max_blank_lines: int = 1, collapse_spaces: bool = False) -> str:
    """NFC, "\\n" line breaks, no invisible characters, no trailing blanks, bounded blank runs.

    `collapse_spaces` also squeezes runs of blanks inside lines and removes indentation: right
    for prose from HTML, wrong for code, whose indentation carries meaning.
    """
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", _LINE_BREAKS.sub("\n", text))
    lines = text.split("\n")
    if collapse_spaces:
        lines = [_SPACE_RUN.sub(" ", line).strip() for line in lines]
    else:
        lines = [line.rstrip() for line in lines]
    out: list[str] = []
    num_blank = 0
    for line in lines:
        num_blank = num_blank + 1 if not line else 0
        if num_blank <= max_blank_lines:
            out.append(line)
    # NFC again: removing characters can join a base letter with a combining mark.
    return unicodedata.normalize("NFC", "\n".join(out).strip("\n"))


def join_sentence_gaps(text: str) -> str:
    """Turn groff's two spaces after a full stop into one."""
    return _SENTENCE_GAP.sub(" ", text)


def squeeze_wide_layout(text: str) -> str:
    """Shrink the page-wide gaps and box rules that tables get when rendered 1000 columns wide."""
    return _LONG_RULE.sub(r"\1\1\1", _WIDE_GAP.sub("    ", text))


def join_cjk_gaps(text: str) -> str:
    """Remove spaces between two CJK characters: Chinese has none; they come from line filling."""
    return _CJK_GAP.sub("", text)


def cut_at_heading(text: str, prefixes: tuple[str, ...]) -> str:
    """Drop everything from the first unindented line that starts with one of `prefixes`.

    Translated man pages end with the same translator credits on every page; cutting them keeps
    thousands of copies of one boilerplate paragraph out of the corpus.
    """
    if not prefixes:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(prefixes):
            return "\n".join(lines[:i]).rstrip()
    return text


def unwrap_paragraphs(text: str) -> str:
    """Join the hard-wrapped lines of each blank-line separated paragraph into one line."""
    return "\n\n".join(" ".join(p.split("\n")) for p in text.split("\n\n"))


def strip_front_matter(text: str) -> str:
    """Drop a leading YAML front matter block (`---` ... `---`)."""
    return _FRONT_MATTER.sub("", text, count=1)


def front_matter(text: str) -> dict[str, str]:
    """The flat `key: value` pairs of a leading YAML front matter block (nested values ignored)."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}
    pairs = (line.split(":", 1) for line in match.group(0).split("\n") if ":" in line and not line[0].isspace())
    return {k.strip(): v.strip() for k, v in pairs}


def strip_mm_proofs(text: str) -> str:
    """Replace every Metamath proof (`$= ... $.`) by a placeholder, keeping the statements."""
    return _MM_PROOF.sub("$= ... $.", text)


def cjk_ratio(text: str) -> float:
    """CJK characters as a share of CJK characters plus Latin letters."""
    num_cjk = len(_CJK_CHAR.findall(text))
    num_latin = len(_LATIN_LETTER.findall(text))
    return num_cjk / max(1, num_cjk + num_latin)


def _word_counts(text: str) -> tuple[int, int]:
    words = [w.lower() for w in _WORD.findall(text)]
    return sum(w in ENGLISH_WORDS for w in words), sum(w in GERMAN_WORDS for w in words)


def is_untranslated(paragraph: str, lang: str) -> bool:
    """True for a paragraph of running English inside a `lang` ("de" or "zh") text."""
    num_en, num_de = _word_counts(paragraph)
    num_native = num_de if lang == "de" else len(_CJK_CHAR.findall(paragraph)) // 2
    return num_en >= 3 and num_en > num_native


def drop_untranslated(text: str, lang: str) -> str:
    """Remove the English paragraphs that partly translated documentation leaves behind."""
    return "\n\n".join(p for p in text.split("\n\n") if not is_untranslated(p, lang))


def is_language(text: str, lang: str) -> bool:
    """A document-level check that `text` is mostly in `lang` ("de" or "zh")."""
    if lang == "zh":
        return cjk_ratio(text) >= 0.3
    num_en, num_de = _word_counts(text)
    return num_de >= 5 and num_de >= 2 * num_en


def split_document(text: str, max_chars: int) -> list[str]:
    """Cut `text` into about equal documents of at most `max_chars` characters.

    Cuts fall at paragraph breaks where possible, else at line breaks, else at spaces, and only
    as a last resort inside a word. Whitespace at the cuts is dropped; nothing else is.
    """
    if not text.strip():
        return []
    if len(text) <= max_chars:
        return [text]
    segments = _segments(text, max_chars, 0)
    target = len(text) / math.ceil(len(text) / max_chars)
    docs: list[str] = []
    current = ""
    num_remaining = len(text)
    for segment in segments:
        # Past the target, cut only if enough text is left for a real document, not a stub.
        full = len(current) + len(segment) > max_chars
        if current and (full or (len(current) >= target and num_remaining >= target / 2)):
            docs.append(current)
            current = ""
        current += segment
        num_remaining -= len(segment)
    docs.append(current)
    docs = [d.strip("\n").rstrip() for d in docs]
    return [d for d in docs if d.strip()]


_SEPARATORS = ("\n\n", "\n", " ")


def _segments(text: str, max_chars: int, level: int) -> list[str]:
    """Pieces of at most `max_chars` whose concatenation is `text`; each keeps its separator."""
    if len(text) <= max_chars:
        return [text]
    if level == len(_SEPARATORS):
        return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
    sep = _SEPARATORS[level]
    pieces = text.split(sep)
    pieces = [p + sep for p in pieces[:-1]] + [pieces[-1]]
    return [s for p in pieces if p for s in _segments(p, max_chars, level + 1)]
