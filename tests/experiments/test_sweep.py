import json
import math

import pytest

from emomoe.analyze.sweep_results import RESULTS_FILE
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.experiments.sweep import SweepConfig, run_sweep, write_sweep
from emomoe.experiments.sweep_report import PLOT_FILE, REPORT_FILE
from emomoe.select.calibration import store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.subset import select_subset

SETTINGS = dict(num_calib_windows=3, num_eval_windows=3, seq_len=32, batch_size=4)


@pytest.fixture(scope="module")
def sweep(checkpoint_dir, store_dir):
    cfg = SweepConfig(keep=[0.5, 0.25], method="layerwise", **SETTINGS)
    return run_sweep({"a": checkpoint_dir}, store_dir, cfg, progress=False)


def test_every_model_keep_and_domain_has_a_loss(sweep):
    assert list(sweep["loss"]["a"]) == ["1", "0.5", "0.25"]
    for per_domain in sweep["loss"]["a"].values():
        assert set(per_domain) == {"code", "legal", "math"} and all(math.isfinite(v) for v in per_domain.values())
    params = sweep["params"]["a"]
    assert params["0.25"]["total"] < params["0.5"]["total"] < params["1"]["total"]
    assert sweep["settings"]["method"] == "layerwise" and sweep["settings"]["domains"] == ["code", "legal", "math"]
    assert sweep["experts"]["a"] == {"routed": [7, 7], "shared": 1}  # the tiny preset: 8 experts, 1 shared
    assert [len(layer) for layer in sweep["kept_experts"]["a"]["0.25"]["legal"]] == [2, 2]


def test_full_model_loss_matches_eval(sweep, checkpoint_dir, store_dir):
    evaluated = evaluate_checkpoint(checkpoint_dir, store_dir, seq_len=32, batch_size=4, num_eval_windows=3)
    for domain, loss in sweep["loss"]["a"]["1"].items():
        assert math.isclose(loss, evaluated["domains"][domain]["loss"], rel_tol=1e-6)


def test_subset_loss_matches_the_standalone_pipeline(sweep, checkpoint_dir, store_dir, tmp_path):
    calib = store_calibration(store_dir, ["legal"], num_windows=3, seq_len=32, batch_size=4)
    record = select_subset(checkpoint_dir, tmp_path / "sub", keep=KeepSpec.of_fraction(0.25), calibration=calib)
    assert record["kept_experts"] == sweep["kept_experts"]["a"]["0.25"]["legal"]
    evaluated = evaluate_checkpoint(
        tmp_path / "sub", store_dir, domains=["legal"], seq_len=32, batch_size=4, num_eval_windows=3
    )
    assert math.isclose(sweep["loss"]["a"]["0.25"]["legal"], evaluated["domains"]["legal"]["loss"], rel_tol=1e-5)


def test_outputs_are_written(sweep, tmp_path):
    report = write_sweep(tmp_path, sweep)
    assert report == tmp_path / REPORT_FILE and "| a mean increase |" in report.read_text()
    assert json.loads((tmp_path / RESULTS_FILE).read_text()) == json.loads(json.dumps(sweep))
    assert (tmp_path / PLOT_FILE).read_bytes()[:4] == b"\x89PNG"


def test_static_methods_give_nested_subsets_from_one_pass(checkpoint_dir, store_dir):
    cfg = SweepConfig(keep=[0.5, 0.25], method="global", domains=["code"], **SETTINGS)
    kept = run_sweep({"a": checkpoint_dir}, store_dir, cfg, progress=False)["kept_experts"]["a"]
    for big, small in zip(kept["0.5"]["code"], kept["0.25"]["code"]):
        assert set(small) < set(big)


def test_bad_settings_are_refused(checkpoint_dir, store_dir):
    with pytest.raises(ConfigError, match="keep"):
        SweepConfig.from_dict({"keep": [0.5, 1.5]})
    with pytest.raises(DataError, match="'poetry'"):
        run_sweep({"a": checkpoint_dir}, store_dir, SweepConfig(domains=["poetry"], **SETTINGS), progress=False)
    with pytest.raises(ConfigError, match="max_seq_len"):
        run_sweep({"a": checkpoint_dir}, store_dir, SweepConfig(**{**SETTINGS, "seq_len": 128}), progress=False)
