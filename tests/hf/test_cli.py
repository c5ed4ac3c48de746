import json

import pytest

from emomoe.cli import main
from tests.hf.conftest import write_emo_dir


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_import_then_export_through_the_cli(tmp_path, tokenizer_dir, capsys):
    source = write_emo_dir(tmp_path / "hf", tokenizer_dir)
    assert main(["hf", "import", "--hf", str(source), "--out", str(tmp_path / "ours")]) == 0
    assert main(["hf", "export", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "back"),
                 "--dtype", "bfloat16", "--max-shard-size", "50KB"]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert json.loads((tmp_path / "back" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda d, t: write_emo_dir(d, t, model_type="qwen2"), ["import", "--hf"], "model_type 'qwen2' is not a layout"),
        (lambda d, t: write_emo_dir(d, None), ["export", "--checkpoint"], "no tokenizer to export"),
    ],
    ids=["another-model-type", "no-tokenizer"],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, tokenizer_dir, capsys, make, args, message):
    source = make(tmp_path / "src", tokenizer_dir)
    assert main(["hf", *args, str(source), "--out", str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"emomoe hf: error: {source}") and message in line
    assert not (tmp_path / "out").exists()


def test_export_into_a_non_empty_directory_needs_force(tmp_path, tokenizer_dir, capsys):
    source = write_emo_dir(tmp_path / "src", tokenizer_dir)
    assert main(["hf", "export", "--checkpoint", str(source), "--out", str(tmp_path / "out")]) == 0
    assert main(["hf", "export", "--checkpoint", str(source), "--out", str(tmp_path / "out")]) == 2
    assert "already exists (pass --force" in _error_line(capsys)
    assert main(["hf", "export", "--checkpoint", str(source), "--out", str(tmp_path / "out"), "--force"]) == 0


@pytest.mark.slow
def test_every_checkpoint_verb_reads_an_olmoe_directory_as_it_is(tmp_path, capsys):
    from tests.fixtures import build_store, word_documents
    from tests.hf.conftest import save_transformers_model

    words = {"code": "def return self import class".split(), "math": "theorem proof lemma integral sum".split()}
    store = build_store(word_documents(words, 12, num_words=(30, 60)), tmp_path / "store", vocab_size=300, val_fraction=0.2)
    olmoe = tmp_path / "olmoe"
    save_transformers_model(olmoe, "olmoe", max_position_embeddings=64)
    common = ["--data", str(store), "--seq-len", "32", "--no-progress"]
    assert main(["eval", "--checkpoint", str(olmoe), "--num-eval-windows", "2", *common]) == 0
    assert set(json.loads(capsys.readouterr().out)["domains"]) == {"code", "math"}
    assert main(["select", "--checkpoint", str(olmoe), "--calib", "math", "--keep", "3", "--num-calib-windows", "4",
                 "--out", str(tmp_path / "sub"), *common]) == 0
    assert main(["finetune", "--checkpoint", str(tmp_path / "sub"), "--max-steps", "1", "--out", str(tmp_path / "ft"), *common]) == 0
    assert main(["sweep", "--checkpoints", str(olmoe), "--keep", "1.0,0.5", "--methods", "random", "--domains", "math",
                 "--num-eval-windows", "2", "--out", str(tmp_path / "sweep"), *common]) == 0
    assert set(json.loads((tmp_path / "sweep" / "results.json").read_text())["loss"]["random"]["olmoe"]) == {"1", "0.5"}


def test_a_layer_with_fewer_routed_experts_than_top_k_is_not_exported(tmp_path, tokenizer_dir, capsys):
    from emomoe.checkpoint import save_model
    from emomoe.model import ModelConfig, build_model

    # top_k 2 with 1 shared expert: layer 1 keeps 2 experts, so 1 routed one. The official class would
    # route every token of that layer to 2 of them and fail; emomoe clamps, so it has to refuse.
    cfg = ModelConfig.preset("tiny").with_overrides(["vocab_size=300", "moe.num_experts_per_layer=[8, 2]"])
    save_model(tmp_path / "ours", build_model(cfg), cfg)
    args = ["hf", "export", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "out"),
            "--tokenizer", str(tokenizer_dir)]
    assert main(args) == 2
    assert _error_line(capsys) == (
        "emomoe hf: error: moe.num_experts_per_layer[1]: 2 experts leave 1 routed, fewer than top_k 2; the HF EMO "
        "class routes every layer to top_k experts (num_experts_per_tok), so keep at least top_k routed experts in "
        "each layer, or none (a dense layer)"
    )
    assert not (tmp_path / "out").exists()
