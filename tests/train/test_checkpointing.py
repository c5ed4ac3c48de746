import re

import pytest
import torch

from emomoe.checkpoint import load_model
from emomoe.errors import DataError
from emomoe.model import ModelConfig, build_model
from emomoe.train.checkpointing import (
    LATEST_FILE,
    CheckpointManager,
    load_trainer_state,
    read_checkpoint,
    step_dir_name,
)
from emomoe.train.shard_files import INDEX_FILE, shard_file
from tests.fixtures import damage, sharded_checkpoint


def trainer_state(step, **extra):
    return {"step": step, "tokens_seen": 0, "world_size": 1, "optimizer": {}, "scheduler": {}, "ranks": [], **extra}


@pytest.fixture
def model_and_cfg():
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    return build_model(cfg), cfg


def test_save_writes_model_checkpoint_and_trainer_state(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=2)
    state = trainer_state(7, tensor=torch.arange(3))
    path = manager.save(7, model, cfg, state)
    assert path == tmp_path / "checkpoints" / step_dir_name(7)
    loaded, loaded_cfg = load_model(path)
    assert loaded_cfg == cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    restored = load_trainer_state(path)
    assert restored["step"] == 7 and torch.equal(restored["tensor"], state["tensor"])
    assert manager.latest() == path


def test_keeps_only_the_newest_and_leaves_no_temporaries(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=2)
    for step in (10, 20, 30, 40):
        manager.save(step, model, cfg, trainer_state(step))
    assert manager.steps() == [30, 40]
    assert manager.latest().name == step_dir_name(40)
    leftovers = [p.name for p in manager.root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_latest_is_the_newest_complete_checkpoint_whatever_the_pointer_says(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=5)
    manager.save(1, model, cfg, trainer_state(1))
    manager.save(2, model, cfg, trainer_state(2))
    for stale in (step_dir_name(9), step_dir_name(1)):  # a kill can leave the pointer behind
        (manager.root / LATEST_FILE).write_text(stale + "\n")
        assert manager.latest().name == step_dir_name(2)
    (manager.root / step_dir_name(3)).mkdir()  # a directory without checksums is not a checkpoint
    assert manager.steps() == [1, 2]


def test_no_checkpoints(tmp_path):
    assert CheckpointManager(tmp_path, num_kept=1).latest() is None


def test_missing_trainer_state_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="trainer state not found"):
        load_trainer_state(tmp_path)


@pytest.mark.parametrize("file", ["model.safetensors", "trainer_state.json", "trainer_state.safetensors", "model.yaml"])
def test_a_flipped_byte_is_caught_naming_the_file(tmp_path, model_and_cfg, file):
    model, cfg = model_and_cfg
    path = CheckpointManager(tmp_path, num_kept=2).save(1, model, cfg, trainer_state(1, tensor=torch.ones(8)))
    read_checkpoint(path)
    damage(path / file, "flip")
    with pytest.raises(DataError, match=rf"{re.escape(str(path / file))}: checksum mismatch"):
        read_checkpoint(path)


def test_resume_falls_back_to_the_newest_intact_checkpoint_and_says_so(tmp_path, model_and_cfg, capsys):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=3)
    for step in (1, 2, 3):
        manager.save(step, model, cfg, trainer_state(step, tensor=torch.ones(8)))
    state_file = manager.root / step_dir_name(3) / "trainer_state.safetensors"
    state_file.write_bytes(state_file.read_bytes()[:20])  # truncated
    restored = manager.restore_newest()
    assert restored.path.name == step_dir_name(2) and restored.state["step"] == 2
    err = capsys.readouterr().err
    assert f"skipping a damaged checkpoint: {state_file}" in err
    assert f"resuming from the newest intact checkpoint instead: {manager.root / step_dir_name(2)}" in err


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=2)
    path = manager.save(1, model, cfg, trainer_state(1))
    (path / "model.safetensors").write_bytes(b"")
    legacy = manager.root / step_dir_name(5)
    legacy.mkdir()
    (legacy / "trainer_state.pt").write_bytes(b"a pickle from an older emomoe")
    with pytest.raises(DataError, match=r"no intact checkpoint.*step-00000005: incomplete.*model.safetensors: checksum"):
        manager.restore_newest()


def test_leftovers_of_a_killed_writer_are_removed(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=2)
    manager.save(1, model, cfg, trainer_state(1))
    (manager.root / ".step-00000002.abc.tmp" / "step-00000002").mkdir(parents=True)
    (manager.root / ".latest.xyz.tmp").mkdir()
    assert manager.steps() == [1]
    manager.remove_temporaries()
    assert sorted(p.name for p in manager.root.iterdir()) == [LATEST_FILE, step_dir_name(1)]


def test_a_sharded_checkpoint_restores_without_weights_and_falls_back_past_a_damaged_shard(
    tmp_path, model_and_cfg, capsys
):
    model, cfg = model_and_cfg
    for step in (1, 2):
        sharded_checkpoint(tmp_path, model, cfg, step=step)
    manager = CheckpointManager(tmp_path, num_kept=2)
    newest = manager.root / step_dir_name(2)
    assert (newest / INDEX_FILE).is_file() and not (newest / "model.safetensors").exists()
    assert (manager.root / LATEST_FILE).read_text() == step_dir_name(2) + "\n"
    damaged = damage(newest / shard_file(0, 1), "flip")
    restored = manager.restore_newest()
    assert restored.path.name == step_dir_name(1) and restored.weights is None and restored.state["step"] == 1
    assert f"skipping a damaged checkpoint: {damaged}: checksum mismatch" in capsys.readouterr().err
