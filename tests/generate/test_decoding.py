import pytest
import torch

from emomoe import ModelConfig, build_model
from emomoe.errors import ConfigError
from emomoe.generate import FinishReason, GenerationConfig, generate, stream
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model

EOS = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").with_overrides([f"eos_id={EOS}", "num_kv_heads=2"])
    return build_model(cfg).eval()


def _prompt(n, seed, boundary=True):
    ids = torch.randint(1, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    if boundary:
        ids[n // 2] = EOS  # a document boundary inside the prompt
    return ids


def _slow_greedy(model, prompt, num_new, eos_id=None):
    """The reference: the full forward over the whole sequence for every new token, no cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(num_new):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if token == eos_id:
                break
            ids.append(token)
    return ids[len(prompt) :]


def test_greedy_with_the_cache_equals_recomputing_the_whole_sequence(model):
    prompt = _prompt(11, seed=1)
    [done] = generate(model, [prompt], GenerationConfig(max_new_tokens=30, greedy=True))
    assert done.tokens == _slow_greedy(model, prompt, 30)
    assert done.finish_reason == FinishReason.LENGTH


def test_greedy_on_a_sliced_subset_equals_its_slow_reference(model):
    layers = moe_layers(model)
    subset, _ = slice_model(model, model.cfg, layers, [[0, 2, 5], [1, 6]])
    prompt = _prompt(7, seed=2)
    [done] = generate(subset.eval(), [prompt], GenerationConfig(max_new_tokens=12, greedy=True))
    assert done.tokens == _slow_greedy(subset, prompt, 12)


def test_a_batch_of_different_lengths_generates_what_each_prompt_does_alone(model):
    prompts = [_prompt(n, seed=n) for n in (3, 17, 9)]
    cfg = GenerationConfig(max_new_tokens=10, greedy=True)
    together = generate(model, prompts, cfg)
    for prompt, done in zip(prompts, together):
        assert done.tokens == generate(model, [prompt], cfg)[0].tokens


def test_a_row_stops_at_eos_and_the_others_go_on(model):
    prompts = [_prompt(6, seed=4), _prompt(8, seed=5)]
    reference = _slow_greedy(model, prompts[0], 8)
    eos = reference[3]  # declare the 4th token EOS: the first row must stop right before it
    done = generate(model, prompts, GenerationConfig(max_new_tokens=8, greedy=True), eos_id=eos)
    assert done[0].tokens == reference[: reference.index(eos)]
    assert done[0].finish_reason == FinishReason.EOS
    assert done[1].tokens == _slow_greedy(model, prompts[1], 8, eos_id=eos)


def test_stream_yields_after_every_step_and_a_stop_function_ends_a_row(model):
    prompt = _prompt(5, seed=6)
    steps = [[len(c.tokens) for c in completions] for completions in stream(
        model, [prompt, prompt], GenerationConfig(max_new_tokens=6, greedy=True),
        stop=lambda row, tokens: row == 0 and len(tokens) == 2,
    )]
    assert steps == [[1, 1], [2, 2], [2, 3], [2, 4], [2, 5], [2, 6]]


def test_sampling_repeats_with_the_seed_and_changes_without_it(model):
    prompt = _prompt(5, seed=7)
    settings = [GenerationConfig(max_new_tokens=20, seed=seed, top_p=0.9) for seed in (1, 1, 2)]
    runs = [generate(model, [prompt], s)[0].tokens for s in settings]
    assert runs[0] == runs[1] != runs[2]


def test_a_prompt_too_long_for_the_model_and_an_empty_prompt_are_refused(model):
    with pytest.raises(ConfigError, match="max_seq_len 128"):
        generate(model, [[1] * 100], GenerationConfig(max_new_tokens=29))
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []], GenerationConfig())


@pytest.mark.slow
def test_greedy_equals_transformers_generate_on_the_hf_export(tmp_path):
    from transformers import AutoModelForCausalLM

    from emomoe.checkpoint import save_model
    from emomoe.data.tokenizer import train_tokenizer
    from emomoe.hf.convert import export_hf

    tok = train_tokenizer(["the router sends each token to a few experts"] * 4, vocab_size=280)
    torch.manual_seed(1)
    cfg = ModelConfig.preset("tiny").with_overrides(["vocab_size=300", f"eos_id={tok.eos_id}", "num_kv_heads=2"])
    ours = build_model(cfg).eval()
    save_model(tmp_path / "ours", ours, cfg)
    export_hf(tmp_path / "ours", tmp_path / "hf", tokenizer=tok.save(tmp_path / "tok"))
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True, dtype=torch.float32).eval()
    # No EOS inside the prompts: emomoe masks attention across documents (as in training), the
    # transformers model of the export, like the official one, does not.
    prompts = [_prompt(9, seed=8, boundary=False), _prompt(4, seed=9, boundary=False)]
    done = generate(ours, prompts, GenerationConfig(max_new_tokens=10, greedy=True))
    ids_BS = torch.tensor([prompts[0], [0] * 5 + prompts[1]])  # the short prompt left-padded
    mask_BS = torch.tensor([[1] * 9, [0] * 5 + [1] * 4])
    out_BS = theirs.generate(ids_BS, attention_mask=mask_BS, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert [c.tokens for c in done] == out_BS[:, 9:].tolist()
