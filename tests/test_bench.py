"""Every benchmark still runs: `bench/X.py --quick` exits 0 and prints one JSON object.

The benches call the library the way users do, so an API change that forgets one of them shows
up here rather than on the day someone measures. Their numbers are not checked: speed targets
live in the benches themselves.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))


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
