import os
import re
import signal
import subprocess
import sys
import time

import pytest

from emomoe.train.checkpointing import CheckpointManager, step_dir_name
from emomoe.train.metrics import read_metrics
from emomoe.train.stop_request import StopRequest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_is_recorded_second_interrupts(sig):
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)


def test_previous_handlers_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def start_training(config, run_dir, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "emomoe", "train", "--config", str(config), "--out", str(run_dir), "--no-progress"]
    # As from a terminal: a shell starts background jobs (CI runners may be one) with SIGINT
    # ignored, and a child inherits that, so Ctrl-C would never reach the start-up code.
    return subprocess.Popen(
        [*command, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_steps(run_dir, num_steps, process, timeout=120):
    deadline = time.monotonic() + timeout
    while len(read_metrics(run_dir / "metrics.jsonl")) < num_steps:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_like_ctrl_c(run_config, tmp_path):
    config = tmp_path / "run.yaml"
    run_config("train.max_steps=100000", "train.eval_every=0").to_yaml(config)
    run = tmp_path / "run"
    process = start_training(config, run)
    wait_for_steps(run, 2, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    step = int(re.search(r"stopped at step (\d+); checkpoint (\S+); continue with --resume", err).group(1))
    restored = CheckpointManager(run, 2).restore_newest()
    assert restored.path.name == step_dir_name(step) and restored.state["step"] == step >= 2


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line(run_config, tmp_path):
    config = tmp_path / "run.yaml"
    # A run too long to finish: on a fast machine start-up may be over before the signal comes, and
    # a stop requested in a run's last step rightly ends it normally.
    run_config("train.max_steps=100000", "train.eval_every=0").to_yaml(config)
    process = start_training(config, tmp_path / "run")
    time.sleep(0.3)  # still importing torch
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    early = err in ("emomoe: interrupted\n", "emomoe train: interrupted\n")
    assert early or re.search(r"stopped at step \d+; checkpoint \S+; continue with --resume", err), err
