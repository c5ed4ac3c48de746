import json
import math

import pytest

from emomoe.analyze.sweep_results import RESULTS_FILE
from emomoe.checkpoint import CheckpointReader, load_for_inference
from emomoe.checkpoint.selection import read_selection
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.experiments.sweep import SELECTIONS_DIR, SweepConfig, run_sweep, write_sweep
from emomoe.experiments.sweep_report import PLOT_FILE, REPORT_FILE
from emomoe.select.calibration import store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import ExpertSelector
from emomoe.select.subset import select_subset
from emomoe.select.weight_source import ModelWeights

SETTINGS = dict(
    num_calib_windows=3, num_eval_windows=3, seq_len=32, batch_size=4, auto_eval_tokens=[8, 16], auto_eval_docs=4
)


@pytest.fixture(scope="module")
def sweep(checkpoint_dir, store_dir):
    cfg = SweepConfig(
        keep=[0.5, 0.25], methods=["layerwise", "reap"], compare_keep=[0.25], equal_bytes=[0.5], **SETTINGS
    )
    return run_sweep({"a": checkpoint_dir}, store_dir, cfg, progress=False)


def test_every_method_model_keep_and_domain_has_a_loss(sweep):
    assert list(sweep["loss"]["layerwise"]["a"]) == ["1", "0.5", "0.25"]
    assert list(sweep["loss"]["reap"]["a"]) == ["1", "0.25"]  # the methods after the first: compare_keep
    for method in ("layerwise", "reap"):
        for per_domain in sweep["loss"][method]["a"].values():
            assert set(per_domain) == {"code", "legal", "math"} and all(math.isfinite(v) for v in per_domain.values())
        assert [len(layer) for layer in sweep["kept_experts"][method]["a"]["0.25"]["legal"]] == [2, 2]
    assert sweep["loss"]["layerwise"]["a"]["1"] == sweep["loss"]["reap"]["a"]["1"]  # the full model, once
    assert sweep["loss"]["layerwise"]["a"]["0.25"] != sweep["loss"]["reap"]["a"]["0.25"]
    params = sweep["params"]["a"]
    assert params["0.25"]["total"] < params["0.5"]["total"] < params["1"]["total"]
    assert sweep["settings"]["methods"] == ["layerwise", "reap"]
    assert sweep["settings"]["domains"] == ["code", "legal", "math"]
    assert sweep["experts"]["a"] == {"routed": [7, 7], "shared": 1}  # the tiny preset: 8 experts, 1 shared


def test_full_model_loss_matches_eval(sweep, checkpoint_dir, store_dir):
    evaluated = evaluate_checkpoint(checkpoint_dir, store_dir, seq_len=32, batch_size=4, num_eval_windows=3)
    for domain, loss in sweep["loss"]["layerwise"]["a"]["1"].items():
        assert math.isclose(loss, evaluated["domains"][domain]["loss"], rel_tol=1e-6)


@pytest.mark.parametrize("method", ["layerwise", "reap"])
def test_subset_loss_matches_the_standalone_pipeline(sweep, checkpoint_dir, store_dir, tmp_path, method):
    calib = store_calibration(store_dir, ["legal"], num_windows=3, seq_len=32, batch_size=4)
    record = select_subset(
        checkpoint_dir, tmp_path / "sub", keep=KeepSpec.of_fraction(0.25), calibration=calib, method=method
    )
    assert record["kept_experts"] == sweep["kept_experts"][method]["a"]["0.25"]["legal"]
    assert record["router_profile"] == sweep["profiles"]["a"]["legal"]
    evaluated = evaluate_checkpoint(
        tmp_path / "sub", store_dir, domains=["legal"], seq_len=32, batch_size=4, num_eval_windows=3
    )
    loss = evaluated["domains"]["legal"]["loss"]
    assert math.isclose(sweep["loss"][method]["a"]["0.25"]["legal"], loss, rel_tol=1e-5)


def test_equal_bytes_subsets_are_selects_budget_subsets_at_the_uniform_subsets_bytes(
    sweep, checkpoint_dir, store_dir, tmp_path
):
    calib = store_calibration(store_dir, ["legal"], num_windows=3, seq_len=32, batch_size=4)
    select_subset(checkpoint_dir, tmp_path / "uniform", keep=KeepSpec.of_fraction(0.5), calibration=calib)
    with CheckpointReader(tmp_path / "uniform") as reader:
        uniform_bytes = sum(reader.get(n).numel() * reader.dtype(n).itemsize for n in reader.names())
    cell = sweep["equal_bytes"]["layerwise"]["a"]["0.5"]
    assert list(sweep["equal_bytes"]) == ["layerwise"] and cell["bytes"] == uniform_bytes
    record = select_subset(checkpoint_dir, tmp_path / "ranked", budget_gb=cell["bytes"] / 1e9, calibration=calib)
    assert record["kept_experts"] == cell["kept_experts"]["legal"]
    assert sum(len(k) for k in record["kept_experts"]) == 8 and record["budget"]["used"] == uniform_bytes
    evaluated = evaluate_checkpoint(
        tmp_path / "ranked", store_dir, domains=["legal"], seq_len=32, batch_size=4, num_eval_windows=3
    )
    assert math.isclose(cell["loss"]["legal"], evaluated["domains"]["legal"]["loss"], rel_tol=1e-5)
    assert set(cell["loss"]) == set(cell["kept_experts"]) == {"code", "legal", "math"}


def test_auto_selection_is_scored_per_model_and_prompt_length(sweep):
    auto = sweep["auto_selection"]["a"]
    assert list(auto) == ["8", "16"]
    for cell in auto.values():
        confusion = cell["confusion"]
        assert sum(sum(row.values()) for row in confusion.values()) == 12  # 4 documents per domain
        right = sum(confusion[d][d] for d in confusion)
        assert cell["accuracy"] == pytest.approx(right / 12)
        assert cell["per_domain"] == {d: pytest.approx(row[d] / 4) for d, row in confusion.items()}


def test_outputs_are_written_and_the_selections_apply_to_the_checkpoint(sweep, tmp_path, checkpoint_dir, store_dir):
    report = write_sweep(tmp_path, sweep)
    text = report.read_text()
    assert report == tmp_path / REPORT_FILE and "| a mean increase |" in text
    assert "## Choosing the subset from the prompt" in text
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == json.loads(json.dumps(sweep))
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    root = tmp_path / SELECTIONS_DIR
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json"))
    assert len(written) == (2 + 1) * 3 and "a/reap/0.25/math.json" in written
    selection = tmp_path / SELECTIONS_DIR / "a" / "reap" / "0.25" / "math.json"
    record = read_selection(selection)
    assert record["kept_experts"] == sweep["kept_experts"]["reap"]["a"]["0.25"]["math"]
    assert record["router_profile"] == sweep["profiles"]["a"]["math"] and record["method"] == "reap"
    masked = evaluate_checkpoint(checkpoint_dir, store_dir, domains=["math"], seq_len=32, batch_size=4,
                                 num_eval_windows=3, selection=[str(selection)])
    assert math.isclose(masked["domains"]["math"]["loss"], sweep["loss"]["reap"]["a"]["0.25"]["math"], rel_tol=1e-6)


def test_profiles_are_the_global_scores_of_each_domain(sweep, checkpoint_dir, store_dir):
    model, cfg = load_for_inference(checkpoint_dir)
    calib = store_calibration(store_dir, ["code"], num_windows=3, seq_len=32, batch_size=4)
    expected = ExpertSelector(ModelWeights(model, cfg), calib.batches, "global").scores()
    assert sweep["profiles"]["a"]["code"] == [mass_E.tolist() for mass_E in expected]


def test_static_methods_give_nested_subsets_from_one_pass(checkpoint_dir, store_dir):
    cfg = SweepConfig(keep=[0.5, 0.25], methods=["global"], domains=["code"], **SETTINGS)
    kept = run_sweep({"a": checkpoint_dir}, store_dir, cfg, progress=False)["kept_experts"]["global"]["a"]
    for big, small in zip(kept["0.5"]["code"], kept["0.25"]["code"]):
        assert set(small) < set(big)


def test_bad_settings_are_refused(checkpoint_dir, store_dir):
    with pytest.raises(ConfigError, match="keep"):
        SweepConfig.from_dict({"keep": [0.5, 1.5]})
    with pytest.raises(ConfigError, match="--compare-keep 2: sweep keeps fractions of the routed experts"):
        SweepConfig.from_dict({"compare_keep": "2"})
    with pytest.raises(ConfigError, match="methods: expected distinct selection methods, got \\['reap', 'reap'\\]"):
        SweepConfig.from_dict({"methods": ["reap", "reap"]})
    with pytest.raises(ConfigError, match=r"auto_eval_tokens: expected integers >= 1, got \[0\]"):
        SweepConfig.from_dict({"auto_eval_tokens": [0]})
    with pytest.raises(ConfigError, match=r"--equal-bytes 0.75: 0.75 not among --keep, the uniform subsets"):
        SweepConfig.from_dict({"keep": "1.0,0.5", "equal_bytes": "0.75"})
    with pytest.raises(ConfigError, match=r"equal_bytes 0.125: the smallest subset \(the top-k routed experts"):
        run_sweep({"a": checkpoint_dir}, store_dir, SweepConfig(keep=[0.125], equal_bytes=[0.125], **SETTINGS))
    with pytest.raises(DataError, match="'poetry'"):
        run_sweep({"a": checkpoint_dir}, store_dir, SweepConfig(domains=["poetry"], **SETTINGS), progress=False)
    with pytest.raises(ConfigError, match="max_seq_len"):
        run_sweep({"a": checkpoint_dir}, store_dir, SweepConfig(**{**SETTINGS, "seq_len": 128}), progress=False)
