import pytest
import torch

from emomoe import ModelConfig, build_model
from emomoe.data.tokenizer import train_tokenizer
from emomoe.generate import GenerationConfig, generate
from emomoe.generate.text import TextStream, cut_at_stop, generate_text, prompt_tokens

TEXT = "模型 experts 专家 route tokens; 中文 and English. " * 3


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([TEXT, "alpha beta gamma delta", "路由 专家 模型"], vocab_size=280)


def test_streamed_pieces_are_never_half_a_character_and_add_up_to_the_text(tokenizer):
    tokens = tokenizer.encode(TEXT)
    assert "\ufffd" in "".join(tokenizer.decode(tokens[:i]) for i in range(len(tokens)))  # splits exist
    text_stream = TextStream(tokenizer)
    pieces = [text_stream.update(tokens[:i]) for i in range(1, len(tokens))]
    pieces.append(text_stream.update(tokens, final=True))
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == TEXT


def test_stop_strings_cut_the_stream_before_them(tokenizer):
    assert cut_at_stop("a;b.c", [".", ";"]) == ("a", True)
    assert cut_at_stop("abc", ["x", ""]) == ("abc", False)
    tokens = tokenizer.encode(TEXT)
    text_stream = TextStream(tokenizer, stop_strings=["; 中"])
    pieces = [text_stream.update(tokens[:i]) for i in range(1, len(tokens) + 1)]
    assert "".join(pieces) == TEXT[: TEXT.index("; 中")]


def test_generate_text_streams_the_text_of_the_generated_tokens(tokenizer):
    torch.manual_seed(0)
    overrides = [f"vocab_size={tokenizer.vocab_size}", f"eos_id={tokenizer.eos_id}"]
    cfg = ModelConfig.preset("tiny").with_overrides(overrides)
    model = build_model(cfg).eval()
    prompts = ["模型 experts", ""]
    gen = GenerationConfig(max_new_tokens=16, greedy=True)
    streamed = {0: "", 1: ""}

    def on_text(row, piece):
        streamed[row] += piece

    done = generate_text(model, tokenizer, prompts, gen, on_text=on_text)
    for row, prompt in enumerate(prompts):
        [tokens] = generate(model, [prompt_tokens(tokenizer, prompt)], gen, eos_id=tokenizer.eos_id)
        assert done[row].text == streamed[row] == tokenizer.decode(tokens.tokens)
        assert done[row].num_tokens == len(tokens.tokens)
    assert prompt_tokens(tokenizer, "") == [tokenizer.eos_id]
