"""Every benchmark still runs: `bench/X.py --quick` exits 0 and prints one JSON object.

The benches call the library the way users do, so an API change that forgets one of them shows
up here rather than on the day someone measures. Their numbers are not checked: speed targets
live in the benches themselves. Their ratio keys are: every `_over_` key is made by
`bench/timing.ratio` and ends with its unit, so it says which way it reads.
"""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))
RATIO_UNITS = ("_tokens_per_s", "_seconds")


def _timing():
    spec = importlib.util.spec_from_file_location("bench_timing", BENCH / "timing" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def test_ratio_names_a_ratio_by_its_unit():
    timing = _timing()
    assert timing.ratio({"emo": 900.0, "std": 1000.0}, "emo", "std", timing.TOKENS_PER_S) == {
        "emo_over_std_tokens_per_s": 0.9
    }
    assert timing.ratio({"subset": 1.5, "full": 1.0}, "subset", "full", timing.SECONDS) == {
        "subset_over_full_seconds": 1.5
    }
    with pytest.raises(ValueError, match="unit"):
        timing.ratio({"a": 1.0, "b": 2.0}, "a", "b", "ms")


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_bench_writes_a_ratio_key_by_hand(script):
    """A literal `_over_` key (`{"a_over_b": ...}`, `row["a_over_b"] = ...`) bypasses `ratio`."""
    tree = ast.parse((BENCH / script).read_text())
    keys = [k for node in ast.walk(tree) if isinstance(node, ast.Dict) for k in node.keys]
    keys += [node.slice for node in ast.walk(tree) if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)]
    literal = [k.value for k in keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    by_hand = [k for k in literal if "_over_" in k]
    assert not by_hand, f"{script}: name these ratios with bench/timing.ratio: {by_hand}"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_runs_quick_and_prints_one_json_object(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict) and result
    unnamed = [k for k in _keys(result) if "_over_" in k and not k.endswith(RATIO_UNITS)]
    assert not unnamed, f"ratio keys without a unit (see bench/timing.ratio): {unnamed}"
