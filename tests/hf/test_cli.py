import json

import pytest

from emomoe.cli import main
from emomoe.cli.hf import parse_size
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
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert main(["hf", "export", "--checkpoint", str(source), "--out", str(tmp_path / "out")]) == 2
    assert "already exists and is not empty (pass --force" in _error_line(capsys)
    assert main(["hf", "export", "--checkpoint", str(source), "--out", str(tmp_path / "out"), "--force"]) == 0


def test_shard_sizes_read_like_transformers():
    assert [parse_size(s) for s in ("5GB", "500MB", "2GiB", "1000")] == [5 * 10**9, 5 * 10**8, 2 * 2**30, 1000]
    with pytest.raises(Exception, match="expected a size like 5GB"):
        parse_size("5 parsecs")
