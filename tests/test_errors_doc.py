"""docs/errors.md: at least 30 rows, and every row names a test that exists (and, for a case of the
parametrized bad-input test, a case that exists)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (.+?) \| `(.+?)` \| `(tests/[^`]+)` \|$")


def table() -> list[str]:
    lines = [line for line in (ROOT / "docs" / "errors.md").read_text().splitlines() if line.startswith("| ")]
    return lines[2:]  # after the header and its rule


def test_at_least_30_rows_each_with_a_message_and_a_test():
    lines = table()
    assert len(lines) >= 30
    assert all(ROW.match(line) for line in lines), [line for line in lines if not ROW.match(line)]


def test_every_cited_test_exists():
    for line in table():
        file, _, test = ROW.match(line).group(3).partition("::")
        name, _, case = test.partition("[")
        source = (ROOT / file).read_text()
        assert re.search(rf"^def {re.escape(name)}\(", source, re.M), f"{file}: no test {name}"
        if case:
            assert f'"{case.rstrip("]")}"' in source, f"{file}: no case {case}"
