"""Shape suffixes and `Legend:` lines follow the one legend of docs/architecture.md ("Shape letters").

A tensor name ends with its shape (`x_BSD`): a lower-case name, an underscore, then one symbol per
dimension (single capitals, `Dh`, or a digit for a dimension of that size). Every symbol of every
such name in `src/emomoe`, `bench` and `tests` must be in the project legend, and every entry of a
module's `Legend:` line must give its symbol the project's name for it: the first name of the
legend that the entry's description mentions must be the symbol's own ("S sequence (the new
tokens)" passes, "S new tokens" fails, as "tokens" is T's name).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
SOURCES = sorted(p for folder in ("src/emomoe", "bench", "tests") for p in (ROOT / folder).rglob("*.py"))

# A lower-case name (letters, digits, underscores; leading underscores allowed), then `_` and a
# suffix that starts with a capital. `CONFIG_FILE` and `HAS_GROUPED_MM` start with a capital, so
# they never match.
SHAPE_NAME = re.compile(r"^_*[a-z][a-z0-9]*(?:_[a-z0-9]+)*_([A-Z][A-Za-z0-9]*)$")
LEGEND_ENTRY = re.compile(r"^([A-Z][a-z]?|[0-9])(?:\s*=\s*|\s+)(\S.*)$")


def project_legend() -> dict[str, str]:
    """Symbol -> name, from the table under "## Shape letters"."""
    text = ARCHITECTURE.read_text()
    section = text.split("\n## Shape letters\n", 1)[1].split("\n## ", 1)[0]
    legend: dict[str, str] = {}
    for line in section.splitlines():
        row = re.match(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|", line)
        if row:
            symbol, name = row.groups()
            assert symbol not in legend, f"docs/architecture.md lists {symbol} twice"
            legend[symbol] = name
    return legend


LEGEND = project_legend()


def split_suffix(suffix: str) -> list[str] | None:
    """The symbols of a suffix (longest legend symbol first, digits alone), or None if some part
    is no symbol of the legend."""
    symbols = sorted(LEGEND, key=len, reverse=True)
    parts, i = [], 0
    while i < len(suffix):
        if suffix[i].isdigit():
            parts.append(suffix[i])
            i += 1
            continue
        match = next((s for s in symbols if suffix.startswith(s, i)), None)
        if match is None:
            return None
        parts.append(match)
        i += len(match)
    return parts


def shape_names(tree: ast.AST) -> set[tuple[str, int]]:
    """(identifier, line) of every name, parameter, attribute, function and keyword with a shape suffix."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.arg):
            name = node.arg
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = node.name
        elif isinstance(node, ast.keyword) and node.arg:
            name = node.arg
        else:
            continue
        if SHAPE_NAME.match(name):
            found.add((name, node.lineno))
    return found


def legend_entries(docstring: str) -> list[str]:
    """The comma-separated entries of a docstring's `Legend:` paragraph, up to its first sentence end."""
    lines = docstring.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Legend:")), None)
    if start is None:
        return []
    paragraph = []
    for line in lines[start:]:
        if not line.strip():
            break
        paragraph.append(line.strip())
    text = " ".join(paragraph)[len("Legend:") :]
    entries, depth, current = [], 0, ""
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        at_end = i + 1 == len(text) or text[i + 1] == " "
        if depth == 0 and ch == "." and at_end:
            break
        if depth == 0 and ch == ",":
            entries.append(current.strip())
            current = ""
        else:
            current += ch
    entries.append(current.strip())
    return [e for e in entries if e]


def _words(text: str) -> list[str]:
    # A plural counts as its singular ("heads" names what "head" does), so compare stems.
    words = re.findall(r"[a-z]+(?:/[a-z]+)*", text.lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words]


def first_named(description: str) -> str | None:
    """The symbol whose name the description mentions first (the longest name where several start
    at the same word: "experts per token" over "experts")."""
    words = _words(description)
    names = {symbol: _words(name) for symbol, name in LEGEND.items()}
    for i in range(len(words)):
        hits = [(len(n), s) for s, n in names.items() if words[i : i + len(n)] == n]
        if hits:
            return max(hits)[1]
    return None


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_project_legend_gives_every_symbol_one_name():
    assert {"B", "S", "T", "D", "E", "K", "G", "L", "V"} <= set(LEGEND)
    names = list(LEGEND.values())
    assert len(names) == len(set(names)), "two symbols share a name"
    for symbol, name in LEGEND.items():
        assert first_named(name) == symbol, f"{symbol}'s name {name!r} reads as another symbol's"


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_every_shape_suffix_uses_symbols_of_the_project_legend(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = sorted(
        (line, name)
        for name, line in shape_names(tree)
        if split_suffix(SHAPE_NAME.match(name).group(1)) is None
    )
    assert not bad, f"{_relative(path)}: suffixes with a symbol not in docs/architecture.md: " + ", ".join(
        f"{name} (line {line})" for line, name in bad
    )


@pytest.mark.parametrize("path", SOURCES, ids=_relative)
def test_a_files_legend_gives_every_symbol_its_project_name(path):
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert not re.search(r"^Shapes:", docstring, re.MULTILINE), f"{_relative(path)}: write the legend as `Legend:`"
    seen = set()
    for entry in legend_entries(docstring):
        match = LEGEND_ENTRY.match(entry)
        assert match, f"{_relative(path)}: legend entry {entry!r} does not start with one symbol"
        symbol, description = match.groups()
        assert symbol in LEGEND, f"{_relative(path)}: {symbol} is not in docs/architecture.md's legend"
        assert symbol not in seen, f"{_relative(path)}: the legend lists {symbol} twice"
        seen.add(symbol)
        named = first_named(description)
        reads = f"reads as {named} ({LEGEND[named]})" if named else "names no symbol of the legend"
        assert named == symbol, f"{_relative(path)}: legend entry {entry!r} {reads}; {symbol} is {LEGEND[symbol]!r}"


def test_the_checks_catch_a_wrong_letter():
    # The helpers themselves: a deliberately wrong suffix and wrong legends fail.
    assert split_suffix("BSD") == ["B", "S", "D"] and split_suffix("BRPDh") == ["B", "R", "P", "Dh"]
    assert split_suffix("B1SS") == ["B", "1", "S", "S"]
    assert split_suffix("BOD") is None  # O is no symbol: it reads like the digit 0
    assert not SHAPE_NAME.match("CONFIG_FILE") and not SHAPE_NAME.match("HAS_GROUPED_MM")
    doc = "Title.\n\nLegend: B batch, S new tokens, G domains (of a, b), L cache capacity, T = B*S tokens. Prose.\n"
    entries = legend_entries(doc)
    assert entries == ["B batch", "S new tokens", "G domains (of a, b)", "L cache capacity", "T = B*S tokens"]
    named = [first_named(LEGEND_ENTRY.match(e).group(2)) for e in entries]
    assert named == ["B", "T", "Y", None, "T"]  # S, G and L fail: they read as T, Y and nothing
