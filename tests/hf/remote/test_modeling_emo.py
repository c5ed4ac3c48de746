"""Our transformers model (the file every export ships) against emomoe's own forward pass."""

import subprocess
import sys

import pytest
import torch

from emomoe.checkpoint import load_for_inference, save_model
from emomoe.hf.convert import export_hf
from emomoe.model import ModelConfig, build_model
from tests.hf.conftest import input_ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_dir):
    """(emomoe model, transformers model loaded with trust_remote_code, export dir): a tiny model
    with a dense layer, grouped-query attention and decisive routing."""
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("exported")
    cfg = ModelConfig.preset("tiny").with_overrides(
        ["vocab_size=300", "eos_id=0", "num_layers=3", "num_kv_heads=2", "moe.router.pool=off", "moe.num_experts_per_layer=[8, 1, 5]"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for block in model.layers:
            if block.moe.router is not None:
                block.moe.router.gate.weight.mul_(30)
    save_model(tmp / "ours", model, cfg)
    export_hf(tmp / "ours", tmp / "hf", tokenizer=tokenizer_dir)
    theirs = AutoModelForCausalLM.from_pretrained(tmp / "hf", trust_remote_code=True, dtype=torch.float32).eval()
    ours, _ = load_for_inference(tmp / "ours")
    return ours, theirs, tmp / "hf"


def _greedy_by_full_forward(model, ids_BS, steps):
    """The slow reference: rerun the whole sequence for every new token, no cache."""
    with torch.no_grad():
        for _ in range(steps):
            next_B1 = model(ids_BS).logits[:, -1].argmax(dim=-1, keepdim=True)
            ids_BS = torch.cat([ids_BS, next_B1], dim=1)
    return ids_BS


def test_logits_equal_emomoes(exported):
    ours, theirs, _ = exported
    ids_BS = input_ids(batch=3, seq=20)
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids_BS).logits, ours(ids_BS).logits, rtol=0, atol=1e-5)


def test_generate_with_a_kv_cache_equals_greedy_decoding_of_emomoe(exported):
    ours, theirs, _ = exported
    ids_BS = input_ids(batch=2, seq=7, seed=3)
    out = theirs.generate(ids_BS, attention_mask=torch.ones_like(ids_BS), max_new_tokens=12, do_sample=False,
                          min_new_tokens=12, use_cache=True)
    assert out.shape == (2, 19)
    assert torch.equal(out, _greedy_by_full_forward(ours, ids_BS, 12))


def test_the_cache_gives_the_logits_of_the_full_sequence(exported):
    from transformers import DynamicCache

    _, theirs, _ = exported
    ids_BS = input_ids(batch=2, seq=15, seed=4)
    cache = DynamicCache(config=theirs.config)
    with torch.no_grad():
        full = theirs(ids_BS, use_cache=False).logits
        chunks = [theirs(ids_BS[:, a:b], cache=cache, use_cache=True).logits for a, b in ((0, 6), (6, 7), (7, 15))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=0, atol=1e-5)


def test_left_padding_in_a_batch_does_not_change_a_prompts_continuation(exported):
    _, theirs, _ = exported
    short, long = input_ids(batch=1, seq=5, seed=5), input_ids(batch=1, seq=9, seed=6)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 4), torch.ones(1, 5)], dim=1), torch.ones(1, 9)]).long()
    together = theirs.generate(batch, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    alone = theirs.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(together[0, 4:], alone[0])


@pytest.mark.slow
def test_the_export_runs_in_transformers_without_emomoe(exported):
    _, theirs, directory = exported
    script = (  # as the README shows it: no prompt (stdin is closed), no FutureWarning
        "import sys, torch; sys.modules['emomoe'] = None\n"  # any import of emomoe would fail
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(directory)!r}, trust_remote_code=True, dtype=torch.float32)\n"
        f"tok = AutoTokenizer.from_pretrained({str(directory)!r}, trust_remote_code=True)\n"
        "ids = torch.arange(1, 11)[None]\n"
        "out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False)\n"
        "print(out[0, -4:].tolist())\n"
    )
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(directory.parent / "hf_home")}
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", script], capture_output=True, text=True,
                         env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    ids = torch.arange(1, 11)[None]
    expected = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.stdout.strip().splitlines()[-1] == str(expected[0, -4:].tolist())


def test_the_export_tokenizer_loads_in_transformers(exported):
    from transformers import AutoTokenizer

    _, theirs, directory = exported
    tok = AutoTokenizer.from_pretrained(directory)
    assert tok.eos_token_id == theirs.config.eos_token_id == 0 and tok.pad_token_id == 0
    assert tok.decode(tok("the cat sat")["input_ids"]) == "the cat sat"
