"""`consolidate`: a sharded training checkpoint becomes a model checkpoint with exactly its weights."""

import json

import pytest
import torch

from emomoe.checkpoint import CheckpointReader, load_model
from emomoe.cli import main
from emomoe.errors import DataError
from emomoe.hf.convert import export_hf
from emomoe.io import verify_checksums
from emomoe.model import ModelConfig, build_model
from emomoe.train.consolidate import consolidate
from emomoe.train.shard_files import shard_file
from tests.fixtures import damage, sharded_checkpoint
from tests.train.conftest import tiny_run_config
from tests.train.multiprocess import train_processes


@pytest.fixture
def sharded(tmp_path):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    return sharded_checkpoint(tmp_path / "run", model, cfg, step=3), model


def test_the_model_comes_out_with_its_exact_weights_step_and_checksums(sharded, tmp_path):
    checkpoint, model = sharded
    out = consolidate(checkpoint, tmp_path / "out", max_shard_size="20KB")
    verify_checksums(out)
    with CheckpointReader(out) as reader:  # checks every name and shape against model.yaml
        state = reader.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert json.loads((out / "meta.json").read_text()) == {"step": 3, "tokens": 192}
    assert len(list(out.glob("model-*.safetensors"))) > 1  # sharded at 20 KB


def test_reading_the_sharded_step_as_a_model_points_to_consolidate(sharded):
    checkpoint, _ = sharded
    with pytest.raises(DataError, match=rf"^{checkpoint}: a sharded training checkpoint, not a model; make one with: "
                       rf"emomoe checkpoint consolidate {checkpoint} --out DIR$"):
        CheckpointReader(checkpoint)


def test_bad_input_is_one_error_and_writes_nothing(sharded, tmp_path):
    checkpoint, _ = sharded
    with pytest.raises(DataError, match="not a sharded training checkpoint"):
        consolidate(tmp_path, tmp_path / "out")
    damaged = damage(checkpoint / shard_file(0, 1), "flip")
    with pytest.raises(DataError, match=f"{damaged}: checksum mismatch"):
        consolidate(checkpoint, tmp_path / "out")
    with pytest.raises(DataError, match="is the checkpoint being consolidated"):
        consolidate(checkpoint, checkpoint, force=True)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.md").write_text("mine")
    with pytest.raises(DataError, match="already exists"):
        consolidate(checkpoint, tmp_path / "out")


@pytest.mark.slow
def test_two_ranks_shards_consolidate_to_the_runs_final_model_and_export(tiny_store, tmp_path, capsys):
    cfg = tiny_run_config(
        tiny_store, "train.max_steps=2", "train.checkpoint_every=2", "train.parallelism=fsdp", "data.batch_size=2"
    )
    train_processes(cfg, tmp_path / "run", 2)
    step = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert main(["checkpoint", "consolidate", str(step), "--out", str(tmp_path / "out")]) == 0
    assert f"wrote {tmp_path / 'out'}" in capsys.readouterr().out
    # final/ is gathered by FSDP itself (a full state dict), independently of the shard files.
    consolidated, final = (load_model(tmp_path / name)[0].state_dict() for name in ("out", "run/final"))
    assert all(torch.equal(consolidated[k], final[k]) for k in final)
    export_hf(tmp_path / "out", tmp_path / "hf", tokenizer=tiny_store)
    assert (tmp_path / "hf" / "config.json").is_file()
