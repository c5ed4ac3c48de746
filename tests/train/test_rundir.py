import os
import re
import subprocess
import sys
import time

import pytest
import torch

from emomoe.checkpoint import load_model
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError
from emomoe.train.config import RunConfig
from emomoe.train.metrics import METRICS_FILE, read_metrics
from emomoe.train.rundir import CONFIG_FILE, FINAL_DIR, check_run_dir, claim_run_dir, first_difference, holds_run
from emomoe.train.trainer import fit_to_store, train
from tests.train.conftest import tiny_run_config


def config(**train):
    return RunConfig.from_dict({"model": {"preset": "tiny"}, "data": {"store": "s", "seq_len": 32}, "train": train})


def test_fresh_directory_is_claimed(tmp_path):
    run = tmp_path / "run"
    check_run_dir(run, config(), resume=False, force=False)
    claim_run_dir(run, config(), force=False)
    assert holds_run(run)
    assert RunConfig.from_yaml(run / CONFIG_FILE) == config()


def test_existing_run_needs_resume_or_force(tmp_path):
    claim_run_dir(tmp_path, config(), force=False)
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--force"):
        check_run_dir(tmp_path, config(), resume=False, force=False)


def test_resume_accepts_train_changes_and_the_batch_size_only(tmp_path):
    claim_run_dir(tmp_path, config(max_steps=10), force=False)
    check_run_dir(tmp_path, config(max_steps=20), resume=True, force=False)
    # Another number of processes needs another per-process batch (the loader checks the global one).
    check_run_dir(tmp_path, config().with_overrides(["data.batch_size=7"]), resume=True, force=False)
    with pytest.raises(ConfigError, match="'data.seq_len'"):
        check_run_dir(tmp_path, config().with_overrides(["data.seq_len=64"]), resume=True, force=False)
    other_model = config().with_overrides(["model.d_model=64"])
    with pytest.raises(ConfigError, match="'model.d_model'"):
        check_run_dir(tmp_path, other_model, resume=True, force=False)


def test_force_removes_only_run_files(tmp_path):
    claim_run_dir(tmp_path, config(), force=False)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints" / "step-00000001").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("mine")
    check_run_dir(tmp_path, config(max_steps=3), resume=False, force=True)
    claim_run_dir(tmp_path, config(max_steps=3), force=True)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert RunConfig.from_yaml(tmp_path / CONFIG_FILE).train.max_steps == 3


def test_two_runs_started_at_once_into_one_directory_cannot_both_claim_it(tmp_path):
    run = tmp_path / "run"
    # Both check before either claims, as two processes started at the same moment do.
    check_run_dir(run, config(max_steps=3), resume=False, force=False)
    check_run_dir(run, config(max_steps=5), resume=False, force=False)
    claim_run_dir(run, config(max_steps=3), force=False)
    with pytest.raises(ConfigError, match=r"run: another run claimed this directory at the same moment; nothing was written$"):
        claim_run_dir(run, config(max_steps=5), force=False)
    assert RunConfig.from_yaml(run / CONFIG_FILE).train.max_steps == 3


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_with_its_own_final_but_no_run_is_refused(tmp_path, force):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "weights.bin").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds final but no run \(config\.yaml\), and a run would replace it"):
        check_run_dir(tmp_path, config(), resume=False, force=force)
    assert (tmp_path / "final" / "weights.bin").read_text() == "mine"


def test_resume_and_force_conflict(tmp_path):
    with pytest.raises(ConfigError, match="contradict"):
        check_run_dir(tmp_path, config(), resume=True, force=True)


def test_first_difference():
    a = {"model": {"d": 1, "moe": {"k": 2}}, "train": {"lr": 1}}
    assert first_difference(a, a) is None
    assert first_difference(a, {"model": {"d": 1, "moe": {"k": 3}}, "train": {"lr": 1}}) == "model.moe.k"
    assert first_difference(a, {"model": a["model"], "train": {"lr": 2}}, skip=("train",)) is None
    other_k = {"model": {"d": 1, "moe": {"k": 3}}, "train": {"lr": 1}}
    assert first_difference(a, other_k, skip=("model.moe.k",)) is None  # a single field, at any depth


RACER = """
import pathlib, sys, time
import emomoe.cli.train  # torch and the verb, before the start line: both racers then start level
from emomoe.cli import main
ready, go = map(pathlib.Path, sys.argv[1:3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[3:]))
"""
"""An `emomoe train` process that waits at a start line (a file) once its imports are done."""


@pytest.mark.slow
def test_two_real_train_processes_into_one_directory_one_wins_and_the_folder_is_its_own(tiny_store, tmp_path):
    run = tmp_path / "run"
    configs = {steps: tiny_run_config(tiny_store, f"train.max_steps={steps}", "train.eval_every=0") for steps in (2, 3)}
    go = tmp_path / "go"
    racers = {}
    for steps, cfg in configs.items():
        cfg.to_yaml(tmp_path / f"{steps}.yaml")
        argv = ["train", "--config", str(tmp_path / f"{steps}.yaml"), "--out", str(run), "--no-progress"]
        racers[steps] = subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / f"ready{steps}"), str(go), *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{steps}").exists() for steps in racers) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outcomes = {steps: (p.wait(timeout=300), *p.communicate()) for steps, p in racers.items()}

    winners = [steps for steps, (code, _, _) in outcomes.items() if code == 0]
    assert len(winners) == 1, outcomes
    (winner,), (loser,) = winners, set(racers) - set(winners)
    code, out, err = outcomes[loser]
    assert code == 2 and out == ""
    # Whichever moment the loser looked: after the winner's claim, or between its check and its claim.
    assert re.fullmatch(
        rf"emomoe train: error: {re.escape(str(run))}( already holds a run \(config\.yaml\); pass --resume to "
        r"continue it or --force to delete it and start over|: another run claimed this directory at the same moment; "
        r"nothing was written)\n", err,
    ), err

    assert RunConfig.from_yaml(run / CONFIG_FILE) == fit_to_store(configs[winner], TokenStore.open(tiny_store))
    assert [r["step"] for r in read_metrics(run / METRICS_FILE) if "ce" in r] == list(range(1, winner + 1))
    # The weights are those of the winner's run alone (one thread each: bitwise reproducible).
    alone = train(configs[winner], tmp_path / "alone", progress=False).final_dir
    weights, _ = load_model(run / FINAL_DIR)
    reference, _ = load_model(alone)
    assert weights.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in weights.state_dict().items())
