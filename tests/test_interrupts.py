import os
import signal

import pytest

from emomoe.interrupts import held_interrupt, terminate_as_interrupt


@pytest.fixture
def sigint_handler():
    """Python's own Ctrl-C handler, whatever the process inherited: started in the background
    (`cmd &`, nohup), Python leaves SIGINT ignored, and held_interrupt rightly leaves that alone."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_in_the_block_is_raised_when_the_block_ends(sigint_handler):
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("after the signal")  # an import here would have run to its end
    assert finished == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_ctrl_c_means_nothing_is_raised(sigint_handler):
    with held_interrupt():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_the_program_installed_is_left_alone():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_ctrl_c_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_in_the_block_is_a_ctrl_c_and_the_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            finished.append("after the signal")
    assert finished == [] and signal.getsignal(signal.SIGTERM) == before
