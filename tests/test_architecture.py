"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml), and the
lazy package root."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_are_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_leaf_module_imports_neither_torch_nor_the_model():
    code = (
        "import sys, emomoe.io, emomoe.errors, emomoe.config, emomoe.tables\n"
        "print(sorted(m for m in ('torch', 'emomoe.model', 'emomoe.hf.formats', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_package_root_still_offers_the_model_on_first_use():
    code = "import emomoe; from emomoe import ModelConfig, build_model; print(build_model.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "emomoe.model.transformer"
