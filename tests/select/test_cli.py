"""The select / finetune / merge / eval / sweep verbs, end to end through `emomoe.cli.main`."""

import json

import pytest
import torch

from emomoe.checkpoint import CheckpointReader, load_model, save_model
from emomoe.checkpoint.selection import SELECTION_FILE
from emomoe.cli import main
from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.train.validation import loss_by_domain


def test_select_finetune_merge(tmp_path, checkpoint_dir, store_dir, capsys):
    sub, ft, merged = tmp_path / "sub", tmp_path / "ft", tmp_path / "merged"
    args = ["select", "--checkpoint", str(checkpoint_dir), "--data", str(store_dir), "--calib", "code,math",
            "--keep", "0.25", "--num-calib-windows", "2", "--seq-len", "32", "--out", str(sub), "--no-progress"]
    assert main(args) == 0
    assert "2, 2 (+ shared)" in capsys.readouterr().out
    record = json.loads((sub / SELECTION_FILE).read_text())
    assert record["calibration"]["domains"] == ["code", "math"] and record["method"] == "layerwise"
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(["finetune", "--checkpoint", str(sub), "--data", str(store_dir), "--max-steps", "2",
                 "--seq-len", "32", "--out", str(ft), "--no-progress"]) == 0
    assert "2 steps on code, math" in capsys.readouterr().out
    assert main(["merge", "--full", str(checkpoint_dir), "--subset", str(ft), "--out", str(merged)]) == 0
    assert (merged / "model.safetensors").is_file()


def test_select_from_a_text_file(tmp_path, checkpoint_dir, store_dir):
    calib = tmp_path / "prompts.jsonl"
    calib.write_text(json.dumps({"text": "theorem proof lemma integral " * 10}) + "\n")
    out = tmp_path / "sub"
    assert main(["select", "--checkpoint", str(checkpoint_dir), "--calib", str(calib),
                 "--tokenizer", str(store_dir / "tokenizer"), "--keep", "3,1", "--method", "easy-ep",
                 "--seq-len", "16", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / SELECTION_FILE).read_text())
    assert [len(k) for k in record["kept_experts"]] == [3, 1] and record["calibration"]["source"] == "files"


def test_select_to_a_byte_budget(tmp_path, checkpoint_dir, store_dir, capsys):
    out = tmp_path / "sub"
    assert main(["select", "--checkpoint", str(checkpoint_dir), "--data", str(store_dir), "--calib", "code",
                 "--budget-gb", "0.0002", "--method", "global", "--seq-len", "32", "--out", str(out),
                 "--no-progress"]) == 0
    record = json.loads((out / SELECTION_FILE).read_text())
    used = record["budget"]["used"]
    assert record["budget"]["limit"] == 200_000 and used <= 200_000
    assert f"{used:,} of the budget's 200,000 bytes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--calib", "code", "--keep", "9"], "only 7 routed experts"),
        (["--calib", "code", "--keep", "0"], "at least 1"),
        (["--calib", "code", "--keep", "zero"], "expected a count"),
        (["--calib", "poetry", "--keep", "2"], "no domain 'poetry'"),
        (["--keep", "2"], "needs --calib"),
        (["--calib", "code", "--keep", "2", "--keep-params", "9000"], "keep and keep_params: give one of them"),
        (["--calib", "code", "--budget-gb", "0.00001"], "budget_gb 1e-05: the smallest subset"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, checkpoint_dir, store_dir, capsys, extra, message):
    out = tmp_path / "sub"
    code = main(["select", "--checkpoint", str(checkpoint_dir), "--data", str(store_dir), "--seq-len", "32",
                 "--out", str(out), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_eval_prints_json_per_domain(tmp_path, checkpoint_dir, store_dir, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint_dir), "--data", str(store_dir), "--domains", "legal",
                 "--seq-len", "32", "--num-eval-windows", "2", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["domains"]) == ["legal"] and result["all"]["loss"] == result["domains"]["legal"]["loss"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(checkpoint_dir), "--data", str(store_dir), "--seq-len", "32",
                 "--num-eval-windows", "1", "--out", str(out), "--no-progress"]) == 0
    assert set(json.loads(out.read_text())["domains"]) == {"code", "legal", "math"}


def test_sweep_writes_results_report_and_plot(tmp_path, checkpoint_dir, store_dir, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--checkpoints", str(checkpoint_dir), "--names", "tiny", "--data", str(store_dir),
            "--methods", "random", "--domains", "code", "math", "--num-eval-windows", "2",
            "--seq-len", "32", "--out", str(out), "--no-progress"]
    assert main([*args, "--keep", "1,0.5"]) == 2  # "1" is one expert in select: never all of them here
    assert "a bare integer is a number of experts" in capsys.readouterr().err
    assert main([*args, "--keep", "1.0,0.5"]) == 0
    printed = capsys.readouterr().out
    assert "tiny (random): mean held-out loss increase 0.5:" in printed
    assert "tiny: --selection auto picks the document's domain at 16 tokens" in printed
    assert main([*args, "--keep", "1.0,0.5"]) == 2  # results are never overwritten without --force
    assert "results.json: already exists (results of an earlier sweep)" in capsys.readouterr().err
    assert main([*args, "--keep", "1.0,0.5", "--force", "--equal-bytes", "0.5"]) == 0
    assert "Per-layer counts lose less than the same count in every layer in" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["equal_bytes"]["random"]["tiny"]["0.5"]["loss"]) == {"code", "math"}
    assert set(results["loss"]["random"]["tiny"]["0.5"]) == {"code", "math"}
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md", "loss_vs_keep.png", "selections"}
    assert {p.name for p in (out / "selections" / "tiny" / "random" / "0.5").iterdir()} == {"code.json", "math.json"}
    assert main(["sweep", "--checkpoints", str(checkpoint_dir), str(checkpoint_dir), "--data", str(store_dir),
                 "--out", str(out)]) == 2
    assert "model names must differ" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bf16_sharded(tmp_path_factory, checkpoint_dir):
    """The test checkpoint stored in bf16, in several shards (the layout of a released model)."""
    model, cfg = load_model(checkpoint_dir)
    path = tmp_path_factory.mktemp("bf16") / "full"
    save_model(path, model.bfloat16(), cfg, max_shard_bytes=30_000)
    return path


def test_select_streams_a_sharded_bf16_checkpoint_and_eval_runs_the_subset(tmp_path, bf16_sharded, store_dir, capsys):
    sub, again = tmp_path / "sub", tmp_path / "again"
    assert main(["select", "--checkpoint", str(bf16_sharded), "--data", str(store_dir), "--calib", "math",
                 "--keep", "0.5", "--num-calib-windows", "4", "--seq-len", "32", "--out", str(sub),
                 "--no-progress"]) == 0
    with CheckpointReader(sub) as subset, CheckpointReader(bf16_sharded) as full:
        assert {subset.dtype(n) for n in subset.names()} == {torch.bfloat16}
        kept = json.loads((sub / SELECTION_FILE).read_text())["kept_experts"]
        assert torch.equal(subset.get("layers.1.moe.experts.w1"), full.get("layers.1.moe.experts.w1")[[*kept[1], 7]])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(sub), "--data", str(store_dir), "--domains", "math",
                 "--seq-len", "32", "--num-eval-windows", "2", "--no-progress"]) == 0
    loss = json.loads(capsys.readouterr().out)["all"]["loss"]
    # The reference: the subset's bf16 values in an fp32 model, evaluated the ordinary way.
    reference, _ = load_model(sub)
    store = TokenStore.open(store_dir)
    batches = eval_batches(store, Split.VAL, seq_len=32, batch_size=16, domains=["math"], max_windows_per_domain=2)
    expected = loss_by_domain(reference.eval(), batches, store.domains)["math"].loss
    assert loss == pytest.approx(expected, rel=1e-5)
    assert main(["select", "--checkpoint", str(bf16_sharded), "--selection", str(sub), "--out", str(again),
                 "--no-progress"]) == 0
    assert json.loads((again / SELECTION_FILE).read_text())["kept_experts"] == kept


@pytest.mark.parametrize("extra", [[], ["--keep", "2", "--selection", "x.json"]])
def test_select_needs_exactly_one_of_keep_and_selection(tmp_path, checkpoint_dir, capsys, extra):
    assert main(["select", "--checkpoint", str(checkpoint_dir), "--out", str(tmp_path / "s"), *extra]) == 2
    assert "either --keep" in capsys.readouterr().err


def test_sweep_names_runs_after_their_run_directory():
    from emomoe.cli._models import model_names

    assert model_names(["runs/emo/final", "runs/std/final"], None) == {"emo": "runs/emo/final", "std": "runs/std/final"}
    assert model_names(["subsets/emo-code"], None) == {"emo-code": "subsets/emo-code"}
    assert model_names(["a/final"], ["mine"]) == {"mine": "a/final"}
