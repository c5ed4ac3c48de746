import json

import pytest
import torch
from hypothesis import given

from emomoe.checkpoint import checkpoint_hash, load_for_inference, save_model
from emomoe.checkpoint.selection import (
    MAX_LINEAGE,
    SELECTION_FILE,
    SelectionConfig,
    lineage,
    load_selections,
    read_selection,
    selection_path,
)
from emomoe.errors import ConfigError, DataError
from emomoe.model import build_model
from tests.fixtures import damaged, fuzz_settings, only_our_errors, tiny_config

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


@pytest.mark.parametrize(("spec", "message"), [
    (["a.json", "b.json"], r"selection: 2 files; give one, or 'auto' first"),
    (["auto", "a.json"], r"selection: 'auto' chooses among several selections; give at least two files"),
    (["a.json", "auto", "b.json"], r"selection: 'auto' comes first"),
])
def test_a_selection_spec_is_one_file_or_auto_and_several(spec, message):
    with pytest.raises(ConfigError, match=message):
        SelectionConfig.from_dict({"selection": spec})
    assert SelectionConfig.from_dict({"selection": ["auto", "a.json", "b.json"]}).auto
    assert not SelectionConfig.from_dict({"selection": ["a.json"]}).auto
    with pytest.raises(ConfigError, match="auto_tokens: expected an integer >= 1, got 0"):
        SelectionConfig.from_dict({"auto_tokens": 0})


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A tiny checkpoint, the model loaded from it, and a selection record of it (with a profile)."""
    root = tmp_path_factory.mktemp("sel")
    cfg = tiny_config(num_layers=3).with_overrides(["moe.num_experts_per_layer=[8,1,8]"])
    torch.manual_seed(0)
    save_model(root / "full", build_model(cfg), cfg)
    model, cfg = load_for_inference(root / "full")
    record = {
        "moe_layers": [0, 2], "kept_experts": [[1, 2], [0, 6]], "source_sha256": checkpoint_hash(root / "full"),
        "router_profile": [[1 / 7] * 7, [0.5, 0.5, 0, 0, 0, 0, 0]],
    }
    return root, model, record


def _write(directory, name, record):
    path = directory / name
    path.write_text(json.dumps(record))
    return path


def test_loaded_selections_restrict_the_model_and_read_their_profiles(full, tmp_path):
    root, model, record = full
    code = _write(tmp_path, "code.json", record)
    legal = _write(tmp_path, "legal.json", {**record, "kept_experts": [[0], [3, 4, 5]]})
    fixed = load_selections(root / "full", model, SelectionConfig(selection=[str(code)]))
    try:
        assert [r.kept_E.tolist() for r in model._routers()] == [[1, 2], [0, 6]] and fixed.active == "code"
    finally:
        fixed.use(None)
    chooser = load_selections(root / "full", model, SelectionConfig(selection=["auto", str(code), str(legal)]))
    assert chooser.names == ["code", "legal"] and chooser.active is None
    assert [p.tolist() for p in chooser.by_name["legal"].profile] == record["router_profile"]
    assert load_selections(root / "full", model, SelectionConfig()) is None


@pytest.mark.parametrize(("change", "message"), [
    ({"source_sha256": "0" * 64}, r"x.json: was made for another model \(source fingerprint 000000000000\.\.\."),
    ({"moe_layers": [0, 1]}, r"x.json: MoE layers \[0, 1\], .*full has \[0, 2\]$"),
    ({"kept_experts": [[1, 2]]}, r"x.json: 'kept_experts' must hold one list per MoE layer \(2\)$"),
    ({"kept_experts": [[2, 1], [0]]}, r"x.json: kept_experts of layer 0 must be ascending distinct routed expert ids in "
                                      r"\[0, 7\), got \[2, 1\]$"),
    ({"router_profile": [[0.5] * 7]}, r"x.json: 'router_profile' must hold one list of \[7, 7\] non-negative"),
    ({"router_profile": [[-1.0] * 7, [0.1] * 7]}, r"x.json: 'router_profile' must hold one list of \[7, 7\] non-neg"),
    ({"router_profile": None}, r"x.json: has no router_profile \(random selections and those made with "
                               r"--no-router-profile have none\), which --selection auto compares prompts with"),
])
def test_a_selection_of_another_model_or_a_bad_one_is_one_error_naming_the_file(full, tmp_path, change, message):
    root, model, record = full
    bad = _write(tmp_path, "x.json", {**record, **change})
    good = _write(tmp_path, "y.json", record)
    with pytest.raises(DataError, match=message):
        load_selections(root / "full", model, SelectionConfig(selection=["auto", str(bad), str(good)]))
    assert all(r.kept_E is None for r in model._routers())


@pytest.mark.parametrize("spec", ["fixed", "auto"])
def test_fuzz_a_damaged_selection_raises_only_our_errors(full, tmp_path, spec):
    root, _, record = full
    valid = json.dumps(record, indent=2).encode()
    good = _write(tmp_path, "good.json", record)

    @fuzz_settings()
    @given(damaged(valid))
    def read(data):
        (tmp_path / "x.json").write_bytes(data)
        files = [str(tmp_path / "x.json")] if spec == "fixed" else ["auto", str(tmp_path / "x.json"), str(good)]
        model, _ = load_for_inference(root / "full")  # a fresh one: a selection restricts the model it loads into
        only_our_errors(load_selections, root / "full", model, SelectionConfig(selection=files))
        only_our_errors(read_selection, tmp_path / "x.json")

    read()
