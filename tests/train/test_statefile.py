import json
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from emomoe.errors import DataError
from emomoe.train.rng import capture_rng_state, restore_rng_state
from emomoe.train.statefile import load_state, save_state, state_files


def assert_same(a, b):
    """Structural equality that compares tensors and arrays by dtype and value, and keeps tuples apart from lists."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b or (a != a and b != b)  # nan == nan


def test_round_trip_keeps_every_type(tmp_path):
    state = {
        "step": 3,
        "lr": [1e-3, float("inf"), float("nan")],
        "betas": (0.9, 0.95),
        "int_keys": {0: {"exp_avg": torch.randn(2, 3), "step": torch.tensor(5.0)}, 1: {}},
        "$odd": "a key that looks like a marker",
        "bf16": torch.ones(4, dtype=torch.bfloat16),
        "numpy": np.arange(6, dtype=np.uint32).reshape(2, 3),
        "flag": True,
        "none": None,
        "empty": torch.zeros(0),
    }
    save_state(state, tmp_path, "s")
    assert_same(load_state(tmp_path, "s"), state)


def test_rng_state_round_trip_replays_the_same_draws(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_state(capture_rng_state(), tmp_path, "rng")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(load_state(tmp_path, "rng"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_optimizer_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    save_state(optimizer.state_dict(), tmp_path, "opt")
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(load_state(tmp_path, "opt"))
    assert_same(fresh.state_dict(), optimizer.state_dict())


class _Exploit:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"step": _Exploit(marker)})
    tree, tensors = state_files(tmp_path, "s")
    for planted in (tree, tensors):
        save_state({"step": 1}, tmp_path, "s")
        planted.write_bytes(payload)
        with pytest.raises(DataError, match=re.escape(str(planted))):
            load_state(tmp_path, "s")
    assert not marker.exists()


def test_unknown_types_are_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match="no safe on-disk form"):
        save_state({"f": lambda: 0}, tmp_path, "s")


@pytest.mark.parametrize("damage", ["truncate_tensors", "garble_tree", "missing"])
def test_damaged_state_is_a_data_error_naming_the_file(tmp_path, damage):
    save_state({"x": torch.arange(100)}, tmp_path, "s")
    tree, tensors = state_files(tmp_path, "s")
    if damage == "truncate_tensors":
        tensors.write_bytes(tensors.read_bytes()[:50])
        name = tensors
    elif damage == "garble_tree":
        tree.write_text(json.dumps({"x": {"$tensor": "t7"}}))
        name = tree
    else:
        tree.unlink()
        name = tree
    with pytest.raises(DataError, match=re.escape(str(name))):
        load_state(tmp_path, "s")


def test_no_load_path_in_the_package_unpickles():
    src = Path(__file__).resolve().parents[2] / "src" / "emomoe"
    unsafe = re.compile(r"weights_only\s*=\s*False|allow_pickle\s*=\s*True|\bpickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)")
    offenders = [
        f"{path.relative_to(src)}:{n}" for path in src.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)
    ]
    assert offenders == []
