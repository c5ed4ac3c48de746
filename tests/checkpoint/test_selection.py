import json

import pytest

from emomoe.checkpoint.selection import MAX_LINEAGE, SELECTION_FILE, lineage, read_selection, selection_path
from emomoe.errors import DataError

RECORD = {"moe_layers": [0], "kept_experts": [[1, 2]], "source_sha256": "ab"}


def _subset_of(directory, source):
    directory.mkdir()
    (directory / SELECTION_FILE).write_text(json.dumps({**RECORD, "source_checkpoint": str(source)}))
    return directory


def test_a_subset_directory_or_its_file_reads_the_same(tmp_path):
    subset = _subset_of(tmp_path / "sub", tmp_path)
    assert selection_path(subset) == selection_path(subset / SELECTION_FILE) == subset / SELECTION_FILE
    assert read_selection(subset) == read_selection(subset / SELECTION_FILE) == {**RECORD, "source_checkpoint": str(tmp_path)}


@pytest.mark.parametrize(("text", "message"), [
    (None, r"not a subset or selection file \(no selection.json\)"),
    ("{", r"selection.json: not valid JSON"),
    ("[1]", r"selection.json: expected a JSON object"),
    ('{"moe_layers": [0], "kept_experts": [[1]]}', r"selection.json: missing 'source_sha256'"),
])
def test_a_bad_selection_is_one_error_naming_the_file(tmp_path, text, message):
    if text is not None:
        (tmp_path / SELECTION_FILE).write_text(text)
    with pytest.raises(DataError, match=message):
        read_selection(tmp_path)


def test_lineage_follows_sources_while_they_exist(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    half = _subset_of(tmp_path / "half", full)
    quarter = _subset_of(tmp_path / "quarter", half)
    assert lineage(quarter) == [quarter, half, full]
    orphan = _subset_of(tmp_path / "orphan", tmp_path / "deleted")
    assert lineage(orphan) == [orphan]


def test_lineage_stops_on_a_cycle(tmp_path):
    a = tmp_path / "a"
    b = _subset_of(tmp_path / "b", a)
    _subset_of(a, b)
    assert len(lineage(a)) == MAX_LINEAGE + 1
