import json

import numpy as np
import pytest

from emomoe.analyze.overlap import overlap_summary, read_kept_sets
from emomoe.errors import DataError


def _selection(path, source, keep, domains, kept):
    path.mkdir(parents=True)
    record = {"source_checkpoint": str(source), "source_sha256": "0" * 64, "keep": keep, "moe_layers": [0, 1],
              "kept_experts": kept, "calibration": {"source": "store", "domains": domains}}
    (path / "selection.json").write_text(json.dumps(record))


def test_kept_sets_come_from_results_and_selections(tmp_path, capsys):
    kept = {"emo": {"0.5": {"code": [[0, 1], [2, 3]], "math": [[1, 2], [2, 3]]}}}
    other = {"emo": {"0.5": {"code": [[3], [0]]}}}
    results = {"loss": {"global": {}, "random": {}}, "kept_experts": {"global": kept, "random": other}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    source = tmp_path / "runs" / "std" / "final"
    source.mkdir(parents=True)
    _selection(tmp_path / "subsets" / "a", source, "2", ["code"], [[0, 1], [0, 1]])
    _selection(tmp_path / "subsets" / "b", source, "2", ["legal", "math"], [[2, 3], [0, 3]])
    _selection(tmp_path / "subsets" / "c", tmp_path / "elsewhere", "2", ["code"], [[0], [1]])
    got = read_kept_sets(tmp_path, {"emo": tmp_path / "x", "std": source})
    assert got["emo"] == kept["emo"]  # the sweep's first method's
    assert got["std"] == {"2": {"code": [[0, 1], [0, 1]], "legal,math": [[2, 3], [0, 3]]}}
    assert sorted(got) == ["emo", "std"]  # subset c is of another model: left out, and said
    assert "left out of the overlap, as of models not analysed here: " in capsys.readouterr().err


def test_a_sweep_of_other_models_or_data_is_not_mixed_in(tmp_path, capsys):
    ours, theirs, store = tmp_path / "runs" / "emo" / "final", tmp_path / "theirs" / "final", tmp_path / "store"
    kept = {"emo": {"0.5": {"code": [[0, 1], [2, 3]]}}, "std": {"0.5": {"code": [[3], [0]]}}}
    results = {"loss": {"layerwise": {}}, "kept_experts": {"layerwise": kept},
               "settings": {"store": str(store), "checkpoints": {"emo": str(theirs), "std": str(ours)}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    # The sweep's "std" is the model analysed here as "emo"; its "emo" is another model.
    assert read_kept_sets(tmp_path, {"emo": ours}, store) == {"emo": kept["std"]}
    assert f"emo ({theirs})" in capsys.readouterr().err
    with pytest.raises(DataError, match=rf"results\.json: the sweep ran on {store}, not on .*other; its subsets were"):
        read_kept_sets(tmp_path, {"emo": ours}, tmp_path / "other")
    with pytest.raises(DataError, match="no kept experts of the analysed models found"):
        read_kept_sets(tmp_path, {"emo": tmp_path / "a third model"}, store)


def test_a_directory_without_kept_experts_is_refused(tmp_path):
    with pytest.raises(DataError, match="no kept experts"):
        read_kept_sets(tmp_path, {})
    with pytest.raises(DataError, match="not found"):
        read_kept_sets(tmp_path / "missing", {})


def test_overlap_summary_by_hand():
    kept = {"m": {"0.5": {"a": [[0, 1], [0, 1]], "b": [[1, 2], [0, 1]], "c": [[2, 3], [2, 3]]}}}
    got = overlap_summary(kept, {"m": [4, 4]})["m"]["0.5"]
    assert got["domains"] == ["a", "b", "c"] and got["num_kept"] == [2, 2]
    # layer 0: a-b 1/3, a-c 0, b-c 1/3; layer 1: a-b 1, a-c 0, b-c 0
    assert np.array(got["jaccard"][0]) == pytest.approx(np.array([[1, 1 / 3, 0], [1 / 3, 1, 1 / 3], [0, 1 / 3, 1]]))
    assert got["mean_off_diagonal"] == pytest.approx([2 / 9, 1 / 3])
    assert got["random_baseline"] == pytest.approx([7 / 18, 7 / 18])
    assert overlap_summary(kept, {})["m"]["0.5"]["random_baseline"] is None
