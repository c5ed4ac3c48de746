"""Building the kernels: once across concurrent processes, and a failure remembered until asked."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emomoe import kernels

USE = """
import torch
from emomoe import kernels
x_TE = torch.randn(64, 16)
ops = kernels.ops()
print(ops is not None and torch.equal(ops.topk_indices(x_TE, 3), x_TE.topk(3).indices), kernels.library_path())
"""


def _env(cache, **more: str) -> dict[str, str]:
    return {**os.environ, kernels.KERNELS_ENV: "1", kernels.CACHE_ENV: str(cache), **more}


def _python(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_four_processes_on_an_empty_cache_build_once_and_all_use_the_kernels(tmp_path, kernel_ops):
    """Two test workers or torchrun ranks starting together: before the lock, each compiled and
    renamed its own library over the others', and a process that then loaded another's file
    registered the ops twice and aborted. Each compile logs `COMPILING` once, just before it starts."""
    started = [
        subprocess.Popen([sys.executable, "-c", USE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(tmp_path))
        for _ in range(4)
    ]
    finished = [(p, *p.communicate(timeout=600)) for p in started]
    for process, out, err in finished:
        assert process.returncode == 0 and out.startswith("True "), err
    assert sum(err.count(kernels.COMPILING) for _, _, err in finished) == 1
    library = Path(finished[0][1].split()[1])
    assert all(Path(out.split()[1]) == library for _, out, _ in finished)
    # The library and its lock, and nothing half-built or failed beside them.
    assert sorted(p.name for p in (tmp_path / "kernels").iterdir()) == [library.stem + ".lock", library.name]


def test_a_failed_build_is_tried_once_then_remembered_until_an_explicit_build(tmp_path):
    no_compiler = _env(tmp_path, CXX="/nonexistent/c++")
    first, second = (_python("-c", USE, env=no_compiler) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.startswith("False ") and second.stdout.startswith("False ")
    # One line, once per machine: the first process says why (without trying to compile, nor
    # torch's warning about the compiler); the second does not compile, and says nothing.
    (warning,) = first.stderr.splitlines()
    assert warning == ("emomoe: fused CPU kernels unavailable, using PyTorch ops (no C++ compiler: /nonexistent/c++ "
                       "not found (set CXX, or install g++))"), first.stderr
    assert second.stderr == ""
    (marker,) = (tmp_path / "kernels").glob("*.failed")
    assert marker.read_text().count("\n") == 1
    # An explicit build tries again, and says in one line why it failed.
    retry = _python("-m", "emomoe", "kernels", "build", env=no_compiler)
    assert retry.returncode == 2 and retry.stderr.count("\n") == 1, retry.stderr
    assert re.fullmatch(r"emomoe kernels: error: .*/nonexistent/c\+\+.*", retry.stderr.splitlines()[-1]), retry.stderr


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """An empty cache and a `_compile` that writes an empty file instead of a library: the build's
    bookkeeping without a 40 s compile (nothing here loads the file)."""
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path))
    calls = []
    monkeypatch.setattr(kernels, "_compile", lambda target: (calls.append(target), target.touch()))
    return calls


def test_an_explicit_build_goes_past_a_remembered_failure_and_forgets_it(fake_compiler):
    library = kernels.library_path()
    marker = kernels.failure_marker(library)
    library.parent.mkdir(parents=True)
    marker.write_text("c++: not found\n")
    with pytest.raises(kernels.BuildFailed, match="c\\+\\+: not found .*emomoe kernels build"):
        kernels.build()
    assert fake_compiler == []
    assert kernels.build(force=True) == (library, True)
    assert fake_compiler == [library] and not marker.exists()
    # Built: neither kind of call compiles again, nor reports that it did.
    assert kernels.build() == kernels.build(force=True) == (library, False)
    assert fake_compiler == [library]


def test_the_extra_flags_are_part_of_the_cache_key(monkeypatch):
    monkeypatch.delenv(kernels.CFLAGS_ENV, raising=False)
    default = kernels.library_path()
    monkeypatch.setenv(kernels.CFLAGS_ENV, "-mno-avx512f")
    assert kernels.library_path() != default and kernels.compiler_flags()[-1] == "-mno-avx512f"
