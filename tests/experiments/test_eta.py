import pytest

from emomoe.experiments.eta import Eta, Stage


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(clock, prior_s=0.0):
    return Eta([Stage("data", 60), Stage("train", 360), Stage("eval", 180)], clock=clock, prior_s=prior_s)


def test_before_any_work_the_reference_times_add_up():
    eta = job(FakeClock())
    assert eta.start("data") == "job: about 10 min left, from the reference timings"
    assert eta.seconds_left() == 600


def test_the_rest_is_estimated_at_the_speed_measured_so_far():
    clock = FakeClock()
    eta = job(clock)
    eta.start("data")
    clock.now += 120  # twice the reference time: the machine runs at half the reference's speed
    assert eta.start("train") == "job: about 18 min left, at the speed so far"
    assert eta.seconds_left() == (360 + 180) * 2
    clock.now += 360  # the reference's speed: 420 reference s in 480 s
    eta.start("eval")
    assert eta.seconds_left() == pytest.approx(180 * 480 / 420)
    assert eta.describe() == "job: about 3 min left, at the speed so far"


def test_reused_work_counts_neither_as_fast_nor_as_left():
    clock = FakeClock()
    eta = job(clock)
    eta.start("data")
    clock.now += 1
    eta.finish(done=0)  # the store was there already
    assert eta.speed is None and eta.seconds_left() == 540
    eta.start("train")
    clock.now += 90  # half the steps were done by an earlier run: 180 reference s of work in 90 s
    eta.finish(done=0.5)
    eta.start("eval")
    assert eta.speed == 2.0
    assert eta.seconds_left() == 90
    assert eta.describe() == "job: about 2 min left, at the speed so far"


def test_under_a_minute_and_misuse():
    clock = FakeClock()
    eta = Eta([Stage("report", 20)], clock=clock)
    with pytest.raises(ValueError, match="no stage has started"):
        eta.finish()
    assert eta.start("report") == "job: under a minute left, from the reference timings"
    with pytest.raises(ValueError, match="report: not a stage of this job, or started twice"):
        eta.start("report")


def test_a_short_first_stage_moves_the_estimate_a_little_the_long_ones_decide_it():
    clock = FakeClock()
    eta = job(clock, prior_s=60.0)
    eta.start("data")
    clock.now += 30  # twice the reference's speed, on a stage of one minute
    eta.start("train")
    # (60 + 60) / (30 + 60) reference seconds per second, not 2: 540 s of work left in 405 s.
    assert eta.seconds_left() == pytest.approx(540 * 90 / 120)
    assert eta.describe() == "job: about 7 min left, at the speed so far"
    clock.now += 720  # training at half the reference's speed
    eta.start("eval")
    assert eta.seconds_left() == pytest.approx(180 * (750 + 60) / (420 + 60))
