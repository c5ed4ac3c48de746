"""The demo's EMO-anneal step (the rest of the demo is tested end to end in tests/cli)."""

import json
import re
import sys

import pytest
import yaml

from emomoe.cli import main
from emomoe.experiments import demo as demo_module
from emomoe.experiments.demo import (
    REFERENCE_S,
    REFERENCE_SIDE_BY_SIDE_TOKENS_PER_S,
    REFERENCE_TOKENS_PER_S,
    check_demo,
    demo_stages,
    demo_threads,
    trains_side_by_side,
)
from emomoe.experiments.sweep_tables import summary_table
from emomoe.io import OUTPUT_MARKER
from emomoe.train.metrics import read_metrics
from tests.cli.test_train_cli import SMALL_DEMO, TOPICS, small_demo_inputs


@pytest.mark.slow
def test_anneal_starts_from_the_standard_model_and_joins_the_comparison(tmp_path, monkeypatch):
    small_demo_inputs(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", "--anneal", *SMALL_DEMO]) == 0
    anneal_cfg = yaml.safe_load((out / "anneal" / "config.yaml").read_text())
    # The standard run's trainer state goes on for a fifth of its 2 steps more (at least one).
    assert anneal_cfg["train"]["anneal_from"] == str(out / "std") and anneal_cfg["train"]["max_steps"] == 3
    emo_cfg = yaml.safe_load((out / "emo" / "config.yaml").read_text())
    assert anneal_cfg["model"]["moe"]["router"]["pool"] == emo_cfg["model"]["moe"]["router"]["pool"] != "off"
    (record,) = read_metrics(out / "anneal" / "metrics.jsonl")
    assert record["step"] == 3 and record["lr"] == 0.0  # one update, the last of the decay
    std_cfg = yaml.safe_load((out / "std" / "config.yaml").read_text())
    assert {k: v for k, v in anneal_cfg["model"].items() if k != "moe"} == {
        k: v for k, v in std_cfg["model"].items() if k != "moe"
    }

    losses = json.loads((out / "val_loss.json").read_text())
    assert list(losses) == ["emo", "anneal", "std"] and set(losses["anneal"]) == {*TOPICS, "all"}
    table = (out / "val_loss.md").read_text()
    assert "EMO-anneal - std" in table and "mean over domains" in table
    sweep = json.loads((out / "results.json").read_text())
    assert list(sweep["loss"]["layerwise"]) == ["emo", "anneal", "std"]
    assert "anneal / std" in summary_table(sweep) and "anneal" in (out / "report.md").read_text()


@pytest.mark.parametrize("problem, message", [
    ("missing-package", r"^emomoe demo: error: emomoe demo needs the 'lm_eval' package: pip install 'emomoe\[all\]'$"),
    ("bad-set", r"^emomoe demo: error: .*demo-emo\.yaml: train\.max_steps: expected an integer >= 1, got -3$"),
    ("users-analysis-folder", r"^emomoe demo: error: .*demo/analysis: is a folder emomoe did not write"),
])
def test_the_demo_stops_before_any_work_in_one_line(tmp_path, monkeypatch, capsys, problem, message):
    out, argv = tmp_path / "demo", []
    if problem == "missing-package":
        monkeypatch.setitem(sys.modules, "lm_eval", None)  # as after `pip install .` without extras
    elif problem == "bad-set":
        argv = ["--set", "train.max_steps=-3"]
    else:
        (out / "analysis").mkdir(parents=True)
        (out / "analysis" / "notes.md").write_text("mine")
    assert main(["demo", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert sorted(p.name for p in out.rglob("*")) in ([], ["analysis", "notes.md"])  # no tokenizer, no store


def test_the_outputs_of_an_earlier_demo_are_adopted_not_refused(tmp_path):
    out = tmp_path / "demo"
    (out / "analysis").mkdir(parents=True)
    (out / "analysis" / "analysis.json").write_text("{}")  # written before folders carried a marker
    check_demo(out, [], anneal=False)
    assert (out / "analysis" / OUTPUT_MARKER).read_text().splitlines()[1:] == ["analysis.json"]


def test_the_demo_eta_starts_from_each_stage_s_reference_time_scaled_by_the_training_budget():
    stages = {s.name: s.reference_s for s in demo_stages(["train.max_steps=50"], anneal=True)}
    assert list(stages) == ["data", "emo", "std", "anneal", "eval", "sweep", "lm-eval", "analysis"]
    # 50 steps x 16 windows x 256 tokens at the reference's tokens per second; the anneal also has 50.
    assert stages["emo"] == stages["std"] == stages["anneal"] == 50 * 16 * 256 / REFERENCE_TOKENS_PER_S
    assert stages["sweep"] == 3 * REFERENCE_S["sweep"] and stages["lm-eval"] == 2 * REFERENCE_S["lm-eval"]
    default = {s.name: s.reference_s for s in demo_stages([], anneal=False)}
    assert default["emo"] == 500 * 16 * 256 / REFERENCE_TOKENS_PER_S and "anneal" not in default


def test_both_models_train_at_once_where_each_process_gets_its_own_cores(monkeypatch):
    for cores, overrides, expected in [
        (1, [], False), (2, [], True), (2, ["train.num_threads=1"], True), (2, ["train.num_threads=2"], False),
        (4, ["train.num_threads=2"], True),
    ]:
        monkeypatch.setattr(demo_module, "available_cores", lambda: cores)
        assert trains_side_by_side(demo_threads(overrides)) is expected, (cores, overrides)
    stages = {s.name: s.reference_s for s in demo_stages([], anneal=True, side_by_side=True)}
    assert list(stages)[:3] == ["data", "emo+std", "anneal"]
    assert stages["emo+std"] == 2 * 500 * 16 * 256 / REFERENCE_SIDE_BY_SIDE_TOKENS_PER_S
