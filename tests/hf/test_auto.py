import os
import shutil
import subprocess
import sys

import pytest

from emomoe.hf.convert import REMOTE_DIR, REMOTE_FILES
from tests.hf.conftest import write_emo_dir

SCRIPT = """
import sys
{first}
assert {transformers_loaded} == ('transformers' in sys.modules), 'import emomoe must not import transformers'
{second}
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.for_model('emo', vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                              num_attention_heads=4, num_experts=4, num_experts_per_tok=2, eos_token_id=0, pad_token_id=0)
model = AutoModelForCausalLM.from_config(config)
print(type(model).__module__ + '.' + type(model).__name__)
"""


def _env(**extra) -> dict[str, str]:
    # PYTHONPATH too, so the child imports the emomoe under test (not another installed copy).
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}
    return env | ({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})


@pytest.mark.slow
@pytest.mark.parametrize("order", ["emomoe-first", "transformers-first"])
def test_import_emomoe_registers_the_emo_classes_with_transformers(order):
    emomoe, transformers = "import emomoe", "import transformers"
    first, second = (emomoe, transformers) if order == "emomoe-first" else (transformers, emomoe)
    script = SCRIPT.format(first=first, second=second, transformers_loaded=order == "transformers-first")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "emomoe.hf.remote.modeling_emo.EmoForCausalLM"


LOAD = """
import sys
{first}
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({directory!r}, trust_remote_code=True, dtype=torch.float32)
print(type(model.config).__module__, type(model).__module__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("emomoe", [True, False], ids=["emomoe-imported", "without-emomoe"])
def test_trust_remote_code_runs_the_checkpoints_own_class_only_without_emomoe(tmp_path, emomoe):
    """The claim in hf/auto.py: transformers prefers registered classes (its "explicit local code") to a
    checkpoint's own files, even with trust_remote_code=True."""
    directory = write_emo_dir(tmp_path / "emo", None)
    for name in REMOTE_FILES:  # the checkpoint's own model files, loaded from the folder by auto_map
        shutil.copyfile(REMOTE_DIR / name, directory / name)
    script = LOAD.format(first="import emomoe" if emomoe else "sys.modules['emomoe'] = None", directory=str(directory))
    env = _env(HF_HOME=str(tmp_path / "hf_home"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    modules = out.stdout.strip().splitlines()[-1].split()
    if emomoe:
        assert modules == ["emomoe.hf.remote.configuration_emo", "emomoe.hf.remote.modeling_emo"]
    else:
        assert all(m.startswith("transformers_modules.") and m.endswith(("configuration_emo", "modeling_emo")) for m in modules)
