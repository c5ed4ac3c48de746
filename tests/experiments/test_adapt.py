"""The adaptation study (`emomoe demo --adapt`) end to end on two tiny topics, one held out."""

import json
import math
import re

import numpy as np
import pytest

from emomoe.cli import main
from emomoe.data.loader import TrainLoader
from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.experiments.adapt_report import loss_table
from tests.cli.test_train_cli import SMALL_DEMO, TOPICS, small_demo_inputs

HELD_OUT, SEEN = "kitchen", "weather"
KS = [2, 8]
ADAPT = ["--adapt", "--held-out", HELD_OUT, "--num-docs", *map(str, KS), "--num-steps", "2", "--no-progress"]


@pytest.mark.slow
def test_adaptation_keeps_the_domain_out_of_pretraining_and_fills_every_cell(tmp_path, monkeypatch, capsys):
    small_demo_inputs(monkeypatch)
    read: list[tuple[str, np.ndarray]] = []  # (store, domain ids) of every batch a TrainLoader hands out
    next_batch = TrainLoader.__next__

    def counted(loader):
        batch = next_batch(loader)
        read.append((str(loader.store.path), batch["domain_ids_BS"].numpy()))
        return batch

    monkeypatch.setattr(TrainLoader, "__next__", counted)
    out = tmp_path / "adapt"
    assert main(["demo", "--out", str(out), *ADAPT, *SMALL_DEMO]) == 0

    store = TokenStore.open(out / "store")
    held_out_id = store.domains.index(HELD_OUT)
    pretraining = [ids for path, ids in read if path == str(out / "store")]
    assert len(pretraining) == 2 * 2  # two models, train.max_steps=2, one micro-batch each
    assert sum(int((ids == held_out_id).sum()) for ids in pretraining) == 0
    assert all((ids == store.domains.index(SEEN)).all() for ids in pretraining)
    # The tokenizer never saw the held-out topic: its words are not tokens of their own.
    tokenizer = load_tokenizer(out / "tokenizer")
    assert len(tokenizer.encode(" storm")) == 1 and len(tokenizer.encode(" bread")) > 1

    train_docs = [tuple(t) for _, t in store.documents(Split.TRAIN, [HELD_OUT])]
    eval_docs = {tuple(t) for _, t in store.documents(Split.VAL, [HELD_OUT])}
    results = json.loads((out / "results.json").read_text())
    for k in KS:
        numbers = results["documents"][str(k)]["numbers"]
        assert len(set(numbers)) == k
        chosen = [train_docs[n] for n in numbers]
        assert not eval_docs & set(chosen)
        docs = TokenStore.open(out / "docs" / f"k{k}")
        assert docs.num_tokens(Split.VAL) == 0
        assert [tuple(t) for _, t in docs.documents(Split.TRAIN)] == chosen
        for model in ("emo", "std"):
            calibration = json.loads((out / "subsets" / f"{model}-k{k}" / "selection.json").read_text())["calibration"]
            assert calibration["store"] == str(out / "docs" / f"k{k}")
            assert calibration["num_tokens"] == sum(map(len, chosen)) - 1  # every token but the first is a label
    assert set(results["documents"]["2"]["numbers"]) < set(results["documents"]["8"]["numbers"])
    # Fine-tuning reads the k documents only: 2 steps of 32 windows (16 forwards of 2 rows) per cell.
    for k in KS:
        tuned = [ids for path, ids in read if path == str(out / "docs" / f"k{k}")]
        assert len(tuned) == 4 * 2 * math.ceil(32 / 16)  # 4 cells, 2 steps, forwards of eval_batch_size 16
        assert all((ids == held_out_id).all() for ids in tuned)

    expected = {f"{m}/full/k0" for m in ("emo", "std")} | {
        f"{m}/{v}/k{k}" for m in ("emo", "std") for v in ("subset", "full") for k in KS
    }
    assert set(results["cells"]) == expected
    for name, cell in results["cells"].items():
        assert set(cell["after"]["domains"]) == set(TOPICS)
        assert cell["after"]["held_out"] == cell["after"]["domains"][HELD_OUT]
        assert cell["after"]["seen"] == cell["after"]["domains"][SEEN]
        if not name.endswith("k0"):
            assert cell["finetune"]["steps"] == 2 and cell["finetune"]["tokens"] == 2 * 32 * 32
    assert results["cells"]["emo/subset/k2"]["params"] < results["cells"]["emo/full/k2"]["params"]
    report = (out / "report.md").read_text()
    assert loss_table(results) in report and "## Cost of each cell" in report

    # A rerun resumes: only the cell that is missing from results.json is computed again.
    del results["cells"]["std/full/k8"]
    (out / "results.json").write_text(json.dumps(results))
    read.clear()
    assert main(["demo", "--out", str(out), *ADAPT, *SMALL_DEMO]) == 0
    again = json.loads((out / "results.json").read_text())
    assert set(again["cells"]) == expected and again["cells"]["emo/full/k8"] == results["cells"]["emo/full/k8"]
    assert {path for path, _ in read} == {str(out / "docs" / "k8")} and len(read) == 2 * 2
    # Other settings do not mix with the cells of these.
    capsys.readouterr()
    assert main(["demo", "--out", str(out), *ADAPT, "--num-steps", "3", *SMALL_DEMO]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"emomoe demo: error: {out / 'results.json'}: results of another setting (num_steps); pass --force to "
        "start over"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--num-docs", "0"], r"num_docs: expected integers >= 1, got \[0\]",
                     id="zero-docs"),
        pytest.param(["--keep", "1.5"], r"keep: expected a number in \(0, 1\), got 1.5",
                     id="keep-all"),
        pytest.param(["--lr", "0"], r"lr: expected a number > 0, got 0.0", id="zero-lr"),
    ],
)
def test_bad_settings_stop_before_any_work(tmp_path, capsys, argv, message):
    assert main(["demo", "--out", str(tmp_path / "adapt"), "--adapt", *argv]) == 2
    assert re.fullmatch(rf"emomoe demo: error: {message}\n", capsys.readouterr().err)
    assert not (tmp_path / "adapt").exists()


def test_a_setting_of_the_study_without_adapt_is_refused(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--num-steps", "3"]) == 2
    assert capsys.readouterr().err == "emomoe demo: error: --num-steps: a setting of the adaptation study; add --adapt\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--held-out", "cooking"], r".*/store: no domain 'cooking' \(domains: kitchen, weather\)",
                     id="unknown-domain"),
        pytest.param(["--num-docs", "8", "500"],
                     r"num_docs: 500 documents asked for, .*/store has 26 training documents of 'kitchen'",
                     id="too-many-docs"),
    ],
)
def test_what_the_store_lacks_stops_the_study_before_training(tmp_path, monkeypatch, capsys, argv, message):
    small_demo_inputs(monkeypatch)
    out = tmp_path / "adapt"
    assert main(["demo", "--out", str(out), "--adapt", "--held-out", HELD_OUT, *argv, "--no-progress"]) == 2
    assert re.fullmatch(rf"emomoe demo: error: {message}", capsys.readouterr().err.splitlines()[-1])  # after warnings
    assert sorted(p.name for p in out.iterdir()) == ["store", "tokenizer"]  # no model trained
