import subprocess
import sys

import pytest

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


@pytest.mark.slow
@pytest.mark.parametrize("order", ["emomoe-first", "transformers-first"])
def test_import_emomoe_registers_the_emo_classes_with_transformers(order):
    emomoe, transformers = "import emomoe", "import transformers"
    first, second = (emomoe, transformers) if order == "emomoe-first" else (transformers, emomoe)
    script = SCRIPT.format(first=first, second=second, transformers_loaded=order == "transformers-first")
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "emomoe.hf.remote.modeling_emo.EmoForCausalLM"
