"""The package as users install it: a normal wheel with the data and configs inside, and honest metadata."""

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    subprocess.run(command, check=True, capture_output=True)
    (path,) = out.glob("emomoe-*.whl")
    return zipfile.ZipFile(path)


@pytest.mark.slow
def test_wheel_holds_the_code_the_corpus_and_the_configs(wheel):
    names = set(wheel.namelist())
    for needed in ("emomoe/cli/__init__.py", "emomoe/data/embedded/corpus.jsonl.zst", "emomoe/configs/demo-emo.yaml",
                   "emomoe/configs/demo-std.yaml", "emomoe/configs/emo-1b14b.yaml"):
        assert needed in names, needed
    assert not any("__editable__" in n or n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_wheel_metadata_asks_for_ranges_and_python_311(wheel):
    meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(wheel.read(meta_name))
    assert meta["Requires-Python"] == ">=3.11"
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("torch>=") for r in core) and not any("==" in r for r in core), core
    assert {"data", "plot", "hf", "analysis", "tensorboard"} <= set(meta.get_all("Provides-Extra"))
    entry_points = wheel.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    assert "emomoe = emomoe.cli:main" in entry_points


def test_this_interpreter_is_supported():
    assert sys.version_info >= (3, 11)  # the lowest supported version, which CI runs on
