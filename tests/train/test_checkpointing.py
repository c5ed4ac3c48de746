import pytest
import torch

from emomoe.checkpoint import load_model
from emomoe.errors import DataError
from emomoe.model import ModelConfig, build_model
from emomoe.train.checkpointing import LATEST_FILE, CheckpointManager, load_trainer_state, step_dir_name


@pytest.fixture
def model_and_cfg():
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    return build_model(cfg), cfg


def test_save_writes_model_checkpoint_and_trainer_state(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=2)
    state = {"step": 7, "tensor": torch.arange(3)}
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
        manager.save(step, model, cfg, {"step": step})
    assert manager.steps() == [30, 40]
    assert manager.latest().name == step_dir_name(40)
    leftovers = [p.name for p in manager.root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_latest_falls_back_to_newest_complete_checkpoint(tmp_path, model_and_cfg):
    model, cfg = model_and_cfg
    manager = CheckpointManager(tmp_path, num_kept=5)
    manager.save(1, model, cfg, {"step": 1})
    manager.save(2, model, cfg, {"step": 2})
    (manager.root / LATEST_FILE).write_text(step_dir_name(9) + "\n")  # stale pointer
    assert manager.latest().name == step_dir_name(2)
    (manager.root / step_dir_name(3)).mkdir()  # a directory without trainer state is not a checkpoint
    assert manager.steps() == [1, 2]


def test_no_checkpoints(tmp_path):
    assert CheckpointManager(tmp_path, num_kept=1).latest() is None


def test_missing_trainer_state_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="trainer state not found"):
        load_trainer_state(tmp_path)
