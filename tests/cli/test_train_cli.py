"""`emomoe train` and `emomoe demo` end to end on a store built with the data verbs."""

import json
import random

import pytest
import yaml

from emomoe.cli import main
from emomoe.experiments import demo
from emomoe.train.metrics import read_metrics
from emomoe.train.provenance import run_store

TOPICS = {"weather": "rain sun cloud wind storm cold warm", "kitchen": "pot pan salt bread knife oven soup"}


def documents(num_per_topic: int = 30) -> list[dict[str, str]]:
    rng = random.Random(1)
    return [
        {"text": " ".join(rng.choice(words.split()) for _ in range(80)), "domain": topic, "source": "test"}
        for topic, words in TOPICS.items()
        for _ in range(num_per_topic)
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in documents()))
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    args = ["tokenize", "--input", str(corpus), "--tokenizer", str(root / "tok"), "--out", str(root / "store")]
    assert main([*args, "--val-fraction", "0.2", "--no-progress"]) == 0
    return root / "store"


@pytest.fixture
def config_file(store, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"preset": "tiny", "vocab_size": 300},
                "data": {"store": str(store), "seq_len": 32, "batch_size": 2},
                "train": {"max_steps": 2, "tensorboard": False, "num_threads": 1, "num_eval_windows": 2},
            }
        )
    )
    return path


def test_train_resume_and_refusals(config_file, tmp_path, capsys):
    run = str(tmp_path / "run")
    base = ["train", "--config", str(config_file), "--out", run, "--no-progress"]
    assert main([*base, "--set", "train.checkpoint_every=1"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out

    assert main(base) == 2
    assert "already holds a run" in capsys.readouterr().err

    assert main(["train", "--out", run, "--resume", "--set", "train.max_steps=3", "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]

    assert main([*base, "--force", "--set", "train.max_steps=1"]) == 0
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]


def test_a_run_records_its_store_resolved_and_resumes_from_any_folder(store, config_file, tmp_path, monkeypatch, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(store.parent)
    config = yaml.safe_load(config_file.read_text())
    config["data"]["store"] = store.name  # as typed, relative to the folder the run starts in
    config_file.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--out", str(run), "--no-progress"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["store"] == str(store.resolve())
    monkeypatch.chdir(tmp_path / "b")
    assert main(["train", "--out", str(run), "--resume", "--set", "train.max_steps=3", "--no-progress"]) == 0
    # Naming the same store another way is no change of config.
    assert main(["train", "--out", str(run), "--resume", "--set", "train.max_steps=4", "--set",
                 f"data.store={store.resolve()}", "--no-progress"]) == 0
    assert "trained step 4 (resumed at step 3)" in capsys.readouterr().out
    assert run_store(run / "final") == store.resolve()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "train.max_stepz=3"], "unknown config key 'train.max_stepz'"),
        (["--set", "model.moe.router.pool=lots"], "pool: 'lots'"),
        (["--set", "data.store=/no/such/store"], "/no/such/store"),
    ],
)
def test_bad_input_is_one_line_naming_it(config_file, tmp_path, capsys, extra, message):
    assert main(["train", "--config", str(config_file), "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "train.lr" in err


def test_resume_needs_a_config_or_a_run(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "empty")]) == 2
    assert "--config is required" in capsys.readouterr().err


SMALL_DEMO = [
    "--set", "train.max_steps=2", "--set", "data.seq_len=32", "--set", "data.batch_size=2",
    "--set", "train.num_threads=1", "--set", "train.tensorboard=false", "--set", "train.eval_every=0",
]
"""Overrides that make the demo a seconds-long run."""


def small_demo_inputs(monkeypatch) -> None:
    """The demo on the test topics' documents with a few short benchmark items."""
    monkeypatch.setattr(demo, "embedded_corpus", lambda: iter(documents()))
    monkeypatch.setattr(demo, "BENCHMARK_TASK", {"num_items": 4, "context_tokens": 16, "continuation_tokens": 4})


def test_demo_trains_both_models_compares_and_reuses(tmp_path, monkeypatch, capsys):
    small_demo_inputs(monkeypatch)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", *SMALL_DEMO]) == 0
    table = capsys.readouterr().out
    for topic in TOPICS:
        assert topic in table
    losses = json.loads((out / "val_loss.json").read_text())
    assert set(losses) == {"emo", "std"} and set(losses["emo"]) == {*TOPICS, "all"}
    emo_cfg = yaml.safe_load((out / "emo" / "config.yaml").read_text())
    std_cfg = yaml.safe_load((out / "std" / "config.yaml").read_text())
    assert emo_cfg["model"]["moe"]["router"]["pool"] != "off" and std_cfg["model"]["moe"]["router"]["pool"] == "off"
    assert emo_cfg["data"] == std_cfg["data"] and emo_cfg["train"] == std_cfg["train"]
    sweep = json.loads((out / "results.json").read_text())
    assert list(sweep["loss"]) == ["layerwise", "global", "easy-ep", "reap", "random"]
    assert set(sweep["loss"]["layerwise"]) == {"emo", "std"}
    assert set(sweep["loss"]["layerwise"]["emo"]) == {"1", "0.5", "0.25", "0.125"}
    assert set(sweep["loss"]["reap"]["emo"]) == {"1", "0.25"}  # the other methods at the lm-eval subset's size
    assert set(sweep["loss"]["layerwise"]["std"]["0.25"]) == set(TOPICS)
    assert list(sweep["auto_selection"]["std"]) == ["16", "32", "64"]
    equal_bytes = sweep["equal_bytes"]["layerwise"]
    assert set(equal_bytes) == {"emo", "std"} and set(equal_bytes["emo"]["0.25"]["loss"]) == set(TOPICS)
    assert "Per-layer counts lose less than the same count in every layer" in table
    assert "## Equal bytes" in (out / "report.md").read_text()
    assert "(method, keep) cells" in table and "prompt tokens" in table
    assert (out / "selections" / "emo" / "reap" / "0.25").is_dir()
    assert "mean increase" in table and (out / "report.md").is_file() and (out / "loss_vs_keep.png").is_file()
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert list(analysis["models"]) == ["emo", "std"] and set(analysis["subset_overlap"]) == {"emo", "std"}
    assert "Emergent modularity" in (out / "report.md").read_text() and "NMI(token cluster; domain)" in table
    accuracy = json.loads((out / "lm_eval.json").read_text())
    assert set(accuracy) == {"emo", "std"} and set(accuracy["emo"]) == {"full", "0.25"}
    assert all(set(per_domain) == set(TOPICS) for m in accuracy.values() for per_domain in m.values())
    assert all(acc in (0, 0.25, 0.5, 0.75, 1) for m in accuracy.values() for d in m.values() for acc in d.values())
    assert "continuation task" in table and "## lm-eval" in (out / "report.md").read_text()

    if demo.trains_side_by_side(1):  # two processes measuring the matmul peak at once would log a wrong MFU
        assert all("mfu" not in r for r in read_metrics(out / "emo" / "metrics.jsonl"))
    # A second run reuses the store and both finished runs.
    store_stamp = (out / "store" / "metadata.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--no-progress", *SMALL_DEMO]) == 0
    assert (out / "store" / "metadata.json").stat().st_mtime_ns == store_stamp
    assert len(read_metrics(out / "emo" / "metrics.jsonl")) == 2

    assert main(["demo", "--out", str(out), "--no-progress", *SMALL_DEMO, "--set", "train.lr=1e-3"]) == 2
    assert "--force" in capsys.readouterr().err
