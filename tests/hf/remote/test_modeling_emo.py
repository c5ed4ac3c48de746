"""Our transformers model (the file every export ships) against emomoe's own forward pass."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from emomoe.checkpoint import load_for_inference, save_model
from emomoe.hf.convert import export_hf
from emomoe.model import ModelConfig, build_model
from tests.hf.conftest import _write_hf_dir, emo_config, emo_state, input_ids, write_emo_dir
from tests.hf.reference import reference_logits


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


def test_rope_is_transformers_float32_rope_to_the_bit():
    """cos and sin as transformers' own rotary embedding computes them (float32 angles), at positions around 4000."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from emomoe.hf.remote.modeling_emo import rope  # after transformers: see auto.py

    config = LlamaConfig(hidden_size=64, num_attention_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    positions_BS = torch.arange(3990, 4010)[None]
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1, 20, 64), positions_BS)
    ours_cos, ours_sin = rope(positions_BS, 32, 500000.0)
    assert torch.equal(ours_cos[:, 0], cos) and torch.equal(ours_sin[:, 0], sin)


def test_logits_at_position_4000_are_the_official_ones(tmp_path):
    """The reference rounds RoPE angles to float32 like the official class; with exact angles these
    logits (head dim 32) move by ~2e-5."""
    import transformers  # noqa: F401  (before our model file: see auto.py)

    from emomoe.hf.remote.modeling_emo import EmoForCausalLM

    directory = write_emo_dir(tmp_path / "emo", None, hidden_size=64, num_attention_heads=2, num_key_value_heads=2)
    config = json.loads((directory / "config.json").read_text())
    model = EmoForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = input_ids(batch=1, seq=8, seed=7)
    with torch.no_grad():
        logits = model(ids, position_ids=torch.arange(4000, 4008)[None], use_cache=False).logits[0]
    expected = reference_logits(load_file(directory / "model.safetensors"), config, ids[0].tolist(), first_position=4000)
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=5e-6)


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


def _labelled_batches(num: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Rows of different lengths, right-padded: padding has label -100 and attention mask 0, and a
    prompt-like start of the first row has label -100 too, so the counted tokens are not all tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(num):
        length = 9 + int(torch.randint(0, 6, (), generator=g))
        ids = torch.randint(1, 300, (14,), generator=g)
        labels = ids.clone()
        labels[length:] = -100
        if i % 3 == 0:
            labels[:3] = -100
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": (torch.arange(14) < length).long()})
    return rows


def _official_loss(model, micro_batches, coef: float) -> torch.Tensor:
    """The loss the official class trains on for one optimizer step, written out from its formula:
    the cross-entropy summed over the label tokens of every micro-batch / N, plus `coef` times the
    Switch LB loss of each micro-batch: the mean over MoE layers of E / (N k) * sum_e count_e * mean_prob_e
    over the tokens whose label is not -100 (routed experts only), N = the label tokens of the step."""
    config = model.config
    num_items = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in micro_batches)
    gates = [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    total = torch.zeros(())
    for batch in micro_batches:
        seen = []
        hooks = [gate.register_forward_hook(lambda m, i, out, seen=seen: seen.append(out)) for gate in gates]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                       output_router_logits=False).logits
        for hook in hooks:
            hook.remove()
        labels = batch["labels"]
        ce = torch.zeros(())
        for b in range(labels.shape[0]):
            for s in range(labels.shape[1] - 1):
                if labels[b, s + 1] != -100:
                    ce = ce - torch.log_softmax(logits[b, s], dim=-1)[labels[b, s + 1]]
        counted = [t for t, label in enumerate(labels.flatten().tolist()) if label != -100]
        layer_losses = []
        for gate, logits_TE in zip(gates, seen):
            routed = gate.out_features - 1  # the shared expert is the last one
            k = config.num_experts_per_tok - 1
            counts = [0] * routed
            prob_sum = torch.zeros(routed)
            for t in counted:
                probs = torch.softmax(logits_TE[t, :routed], dim=-1)
                for e in sorted(range(routed), key=lambda e: -float(probs[e].detach()))[:k]:
                    counts[e] += 1
                prob_sum = prob_sum + probs
            mean_prob = prob_sum / len(counted)
            layer_losses.append(routed / (num_items * k) * sum(c * p for c, p in zip(counts, mean_prob)))
        total = total + ce / num_items + coef * sum(layer_losses) / len(layer_losses)
    return total


@pytest.mark.slow
def test_trainer_with_checkpointing_and_accumulation_trains_on_the_official_loss(exported, tmp_path):
    """transformers.Trainer, 2 steps of 2 accumulated micro-batches with gradient checkpointing: the
    loss of every step and the gradients before every optimizer step are those of the official formula."""
    import copy

    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    _, _, directory = exported
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32)
    model.config.router_aux_loss_coef = 0.5  # large, so a missing or mis-scaled LB term shows
    reference = copy.deepcopy(model)
    fed, micro_losses, steps = [], [], []

    def collate(rows):
        batch = {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
        fed.append(batch)
        return batch

    class Capture(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            steps.append((
                {n: p.detach().clone() for n, p in model.named_parameters()},
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            ))

    model.register_forward_hook(lambda m, args, out: micro_losses.append(out.loss.detach()))
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        max_steps=2, activation_checkpointing=True, learning_rate=1e-2, max_grad_norm=0.0, report_to="none",
        save_strategy="no", use_cpu=True, remove_unused_columns=False, dataloader_num_workers=0, seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_labelled_batches(8, seed=1), data_collator=collate,
                      callbacks=[Capture()])
    trainer.train()

    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    assert len(steps) == 2 and len(fed) >= 4 and len(micro_losses) == 4
    for step, (params, grads) in enumerate(steps):
        reference.load_state_dict(params)
        reference.zero_grad()
        loss = _official_loss(reference, fed[2 * step : 2 * step + 2], coef=0.5)
        loss.backward()
        torch.testing.assert_close(sum(micro_losses[2 * step : 2 * step + 2]), loss.detach(), rtol=1e-5, atol=1e-6)
        expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
        assert grads.keys() == expected.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_checkpoint_without_an_lm_head_whose_config_ties_it_uses_the_embedding(tmp_path):
    import transformers  # noqa: F401  (before our model file: see auto.py)

    from emomoe.hf.remote.modeling_emo import EmoForCausalLM

    config = emo_config(tie_word_embeddings=True)
    state = emo_state(config)
    del state["lm_head.weight"]
    directory = _write_hf_dir(tmp_path / "tied", config, state, None)
    model = EmoForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = input_ids(batch=1, seq=6, seed=8)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[0]
    torch.testing.assert_close(logits.double(), reference_logits(state, config, ids[0].tolist()), rtol=1e-6, atol=1e-5)


def test_a_checkpoint_without_an_lm_head_whose_config_does_not_tie_it_is_refused(tmp_path):
    import transformers  # noqa: F401  (before our model file: see auto.py)

    from emomoe.hf.remote.modeling_emo import EmoForCausalLM

    config = emo_config()
    state = emo_state(config)
    del state["lm_head.weight"]
    directory = _write_hf_dir(tmp_path / "untied", config, state, None)
    with pytest.raises(ValueError, match=r"^EmoForCausalLM: the weights have no 'lm_head.weight', and config.json does not "
                                         r"tie it to the embedding \(tie_word_embeddings: false\); the head would be random$"):
        EmoForCausalLM.from_pretrained(directory, dtype=torch.float32)
