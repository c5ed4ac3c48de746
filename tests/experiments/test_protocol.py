import json
import signal
import subprocess
import sys
import time

import pytest

from emomoe.cli import main
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.domain_task import DOMAIN_TASK
from emomoe.experiments import protocol as protocol_module
from emomoe.experiments.benchmarks import go_offline, run_tasks, task_scores
from emomoe.experiments.finetune import FinetuneRecipe
from emomoe.experiments.protocol import RESULTS_FILE, ProtocolConfig, run_protocol
from emomoe.experiments.protocol_report import REPORT_FILE
from emomoe.experiments.task_data import select_on_task
from emomoe.select.subset import SelectConfig, select_subset
from tests.fixtures import save_tiny_checkpoint

SMALL = dict(tasks=[DOMAIN_TASK], keep=["0.5"], methods=["layerwise", "random"], num_calib=[2], num_items=4,
             context_tokens=12, num_fewshot=1, seq_len=48, recipe=FinetuneRecipe(global_batch_size=8))
"""The protocol in its small form: one shipped task, one keep, two methods, one calibration size."""


@pytest.fixture(scope="module")
def models(tmp_path_factory, store_dir):
    """Tiny EMO and standard models, and a dense one as the reference."""
    root = tmp_path_factory.mktemp("protocol")
    return {
        "emo": save_tiny_checkpoint(root / "emo", store_dir),
        "std": save_tiny_checkpoint(root / "std", store_dir, "moe.router.pool=off", seed=1),
        "dense": save_tiny_checkpoint(root / "dense", store_dir, "moe.num_experts=1", "moe.top_k=0",
                                      "moe.router.pool=off", "moe.expert_hidden_size=64", seed=2),
    }


@pytest.mark.slow
def test_the_protocol_selects_evaluates_fine_tunes_and_resumes(tmp_path, models, store_dir, monkeypatch, capsys):
    go_offline()
    out, selected, references = tmp_path / "protocol", {k: models[k] for k in ("emo", "std")}, {"dense": models["dense"]}
    results = run_protocol(selected, out, ProtocolConfig(**SMALL, finetune=True), references=references,
                           data=store_dir, progress=False)
    cells = {(c["model"], c["method"], c["keep"], c["num_calib"]): c for c in results["cells"]}
    assert set(cells) == {("emo", "full", None, None), ("std", "full", None, None), ("dense", "full", None, None),
                          ("emo", "layerwise", "0.5", 2), ("std", "layerwise", "0.5", 2),
                          ("emo", "random", "0.5", None), ("std", "random", "0.5", None)}
    for cell in cells.values():
        assert cell["before"]["n"] == 12 == cell["after"]["n"]  # 4 held-out items per domain
        assert cell["finetune"]["num_examples"] == 12 and cell["finetune"]["num_steps"] == 2  # 8, then 4
    assert results["models"]["dense"]["role"] == "reference" and results["models"]["dense"]["routed"] == []
    assert cells["emo", "layerwise", "0.5", 2]["num_examples"] == 2
    assert cells["emo", "layerwise", "0.5", 2]["bytes"] < results["models"]["emo"]["bytes"]

    # The selection is what `select --task` picks with the same settings, and the masked score the sliced subset's.
    cell = cells["emo", "layerwise", "0.5", 2]
    record = json.loads((out / cell["selection"]).read_text())
    alone = select_on_task(models["emo"], tmp_path / "alone", SelectConfig(
        keep="0.5", num_calib=2, num_fewshot=1, seq_len=48), task=DOMAIN_TASK, data=store_dir)
    assert record["kept_experts"] == alone["kept_experts"]
    select_subset(models["emo"], tmp_path / "sliced", selection=out / cell["selection"])
    from emomoe.experiments.harness import EmoLM

    tokenizer = TokenStore.open(store_dir).tokenizer_path
    sliced = run_tasks(EmoLM(checkpoint=str(tmp_path / "sliced"), tokenizer=tokenizer), [DOMAIN_TASK],
                       include_path=[out / "tasks"], num_fewshot=1)
    assert task_scores(sliced)[DOMAIN_TASK]["acc"] == cell["before"]["acc"]
    report = (out / REPORT_FILE).read_text()
    assert "### Memory-matched references" in report and "| emo | layerwise | 0.5 | 4 |" in report

    # A second run reuses the finished cells: only the new keep's four cells are evaluated.
    calls, evaluate = [], protocol_module.evaluate_tasks
    monkeypatch.setattr(protocol_module, "evaluate_tasks", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    again = run_protocol(selected, out, ProtocolConfig(**SMALL | {"keep": ["0.5", "0.25"]}), references=references,
                         data=store_dir, progress=False)
    assert len(calls) == 4 and len(again["cells"]) == 11
    assert [c for c in again["cells"] if c["keep"] != "0.25"] == results["cells"]

    # Settings that change a finished cell need --force: one line, nothing written.
    before = (out / RESULTS_FILE).read_text()
    args = ["protocol", "--checkpoints", str(models["emo"]), "--names", "emo", "--data", str(store_dir),
            "--tasks", DOMAIN_TASK, "--keep", "0.5", "--num-calib", "2", "--num-items", "4", "--context-tokens", "12",
            "--num-fewshot", "2", "--seq-len", "48", "--recipe.global-batch-size", "8", "--out", str(out)]
    capsys.readouterr()  # what the runs above printed
    assert main(args) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"emomoe protocol: error: {out / RESULTS_FILE}: its cells were made with another num_fewshot "
                    "(was 1); pass --force to start over, or another --out")
    assert (out / RESULTS_FILE).read_text() == before and not (out / ".work").exists()


def test_calibration_too_small_for_any_cell_is_refused_before_any_work(tmp_path, models, store_dir):
    go_offline()
    with pytest.raises(DataError, match=r"calibration data task emomoe_domain \(1 examples\): 8 tokens, fewer than"):
        run_protocol({"emo": models["emo"]}, tmp_path / "p", tasks=[DOMAIN_TASK], num_calib=[1], num_items=2,
                     context_tokens=12, seq_len=8, data=store_dir, progress=False)
    assert not (tmp_path / "p" / RESULTS_FILE).exists()


@pytest.mark.slow
def test_sigterm_stops_within_a_cell_and_keeps_the_finished_ones(tmp_path, models, store_dir, monkeypatch):
    """SIGTERM (a scheduler, `docker stop`) once the first cell is written, while the next is being
    evaluated: the run stops with Ctrl-C's exit code, its finished cells and report written, and the
    same command then evaluates only the cells it lacks."""
    out = tmp_path / "p"
    argv = ["protocol", "--checkpoints", str(models["emo"]), "--names", "emo", "--data", str(store_dir),
            "--tasks", DOMAIN_TASK, "--keep", "0.5", "--methods", "layerwise", "random", "--num-calib", "2",
            "--num-items", "4", "--context-tokens", "12", "--num-fewshot", "1", "--seq-len", "48", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "emomoe", *argv, "--no-progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / RESULTS_FILE).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1].endswith("emomoe protocol: interrupted")
    finished = json.loads((out / RESULTS_FILE).read_text())["cells"]
    assert 1 <= len(finished) < 3 and all("before" in cell for cell in finished)
    assert any(f"stopped: {len(finished)} finished cells kept in {out / RESULTS_FILE}" in line for line in lines)
    assert (out / REPORT_FILE).is_file() and not (out / ".work").exists()

    calls, evaluate = [], protocol_module.evaluate_tasks
    monkeypatch.setattr(protocol_module, "evaluate_tasks", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    assert main(argv) == 0
    cells = json.loads((out / RESULTS_FILE).read_text())["cells"]
    assert len(cells) == 3 and cells[: len(finished)] == finished and len(calls) == 3 - len(finished)


@pytest.mark.slow
def test_calibration_prompts_can_have_their_own_shot_count(tmp_path, models, store_dir):
    """--calib-num-fewshot 0 with --num-fewshot 1 (the official NUM_SHOTS_SELECTIVE and
    NUM_SHOTS_EVAL): the subset is the one a 0-shot run selects, and the scores are a 1-shot run's."""
    go_offline()

    def cells(**shots):
        settings = SMALL | {"keep": ["0.25"], "methods": ["layerwise"], **shots}
        out = tmp_path / "-".join(f"{k}{v}" for k, v in shots.items())
        results = run_protocol({"emo": models["emo"]}, out, ProtocolConfig(**settings), data=store_dir, progress=False)
        by_method = {c["method"]: c for c in results["cells"]}
        kept = json.loads((out / by_method["layerwise"]["selection"]).read_text())["kept_experts"]
        return kept, {m: c["before"] for m, c in by_method.items()}

    kept, scores = cells(num_fewshot=1, calib_num_fewshot=0)
    kept_0shot, _ = cells(num_fewshot=0)
    kept_1shot, scores_1shot = cells(num_fewshot=1)
    assert kept == kept_0shot != kept_1shot
    assert scores["full"] == scores_1shot["full"]
    assert "1-shot, calibration 0-shot" in (tmp_path / "num_fewshot1-calib_num_fewshot0" / REPORT_FILE).read_text()
    with pytest.raises(ConfigError, match="calib_num_fewshot: expected an integer >= 0, got -1"):
        ProtocolConfig(calib_num_fewshot=-1).check()
