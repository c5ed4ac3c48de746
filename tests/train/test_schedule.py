import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from emomoe.train.config import LRSchedule, TrainConfig
from emomoe.train.schedule import build_scheduler, lr_multiplier


def reference_multiplier(step: int, warmup: int, decay: int, floor: float, schedule: str) -> float:
    """OLMo-core's CosWithWarmup / LinearWithWarmup, written out case by case: the update that makes
    step `step + 1` is its number `step + 1` (OLMo-core counts its global step from 1)."""
    update = step + 1
    if update < warmup:
        return update / warmup
    if schedule == "constant":
        return 1.0
    if update >= decay:
        return floor
    progress = (update - warmup) / (decay - warmup)
    if schedule == "cosine":
        return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2
    return floor + (1 - floor) * (1 - progress)


def test_olmo_core_cosine_by_hand():
    # warmup 4, 10 updates, floor 0.1: updates 1..4 rise by quarters, then the cosine starts from
    # the peak at update 4 and reaches the floor on the last update, 10.
    cfg = TrainConfig(warmup_steps=4, max_steps=10, final_lr_ratio=0.1)
    got = [lr_multiplier(s, cfg) for s in range(10)]
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert got[4] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 6)) / 2)  # update 5: 1/6 of the way
    assert got[6] == pytest.approx(0.55)  # update 7: half way
    assert got[9] == pytest.approx(0.1)


@given(
    warmup=st.integers(0, 50),
    extra=st.integers(1, 200),
    floor=st.floats(0.0, 1.0),
    schedule=st.sampled_from(list(LRSchedule)),
    step=st.integers(0, 400),
)
def test_matches_reference(warmup, extra, floor, schedule, step):
    cfg = TrainConfig(warmup_steps=warmup, max_steps=warmup + extra, final_lr_ratio=floor, schedule=schedule)
    expected = reference_multiplier(step, warmup, warmup + extra, floor, schedule.value)
    assert lr_multiplier(step, cfg) == pytest.approx(expected, abs=1e-12)


@given(warmup=st.integers(1, 30), extra=st.integers(2, 100), floor=st.floats(0.0, 0.9))
def test_warmup_rises_to_peak_then_decays_to_floor(warmup, extra, floor):
    cfg = TrainConfig(warmup_steps=warmup, max_steps=warmup + extra, final_lr_ratio=floor)
    values = [lr_multiplier(s, cfg) for s in range(warmup + extra + 5)]
    assert all(a < b for a, b in zip(values[:warmup], values[1:warmup]))
    assert values[warmup - 1] == pytest.approx(1.0)
    decay = values[warmup - 1 :]
    assert all(a >= b - 1e-12 for a, b in zip(decay, decay[1:]))
    assert values[-1] == pytest.approx(floor)


def test_decay_steps_overrides_run_length():
    cfg = TrainConfig(warmup_steps=10, max_steps=1000, decay_steps=100, final_lr_ratio=0.1)
    assert lr_multiplier(100, cfg) == pytest.approx(0.1)
    assert lr_multiplier(500, cfg) == pytest.approx(0.1)
    assert lr_multiplier(55, cfg) > 0.1


def test_scheduler_drives_the_optimizer_lr():
    cfg = TrainConfig(lr=0.5, warmup_steps=4, max_steps=20)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([cfg.lr * lr_multiplier(s, cfg) for s in range(8)])


def test_linear_without_warmup_to_zero_is_the_decay_of_wsd():
    # OLMo-core's WSD decay: from the start LR at update 0 down to 0 on the run's last update.
    cfg = TrainConfig.from_dict({"lr": 4e-4, "max_steps": 4, "warmup_steps": 0, "schedule": "linear", "final_lr_ratio": 0})
    assert [lr_multiplier(s, cfg) for s in range(5)] == [0.75, 0.5, 0.25, 0.0, 0.0]


@pytest.mark.parametrize(("warmup", "total"), [(1, 5), (3, 30), (10, 11)])
def test_warmup_from_zero_is_hf_trainers_linear_schedule(warmup, total):
    from transformers import get_linear_schedule_with_warmup

    cfg = TrainConfig(lr=1.0, warmup_steps=warmup, max_steps=total, schedule="linear", final_lr_ratio=0.0,
                      warmup_from_zero=True)
    param = torch.nn.Parameter(torch.zeros(1))
    hf = get_linear_schedule_with_warmup(torch.optim.SGD([param], lr=1.0), warmup, total)
    expected = []
    for _ in range(total + 2):
        expected.append(hf.get_last_lr()[0])
        hf.optimizer.step()
        hf.step()
    assert [lr_multiplier(s, cfg) for s in range(total + 2)] == pytest.approx(expected, abs=1e-12)
    assert expected[0] == 0.0
