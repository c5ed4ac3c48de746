"""The tokenizer in the GGUF file: the pre-tokenizer mapping, its refusals, the keys written, and
that llama.cpp itself tokenizes thousands of lines of every domain of the embedded corpus as we do."""

import itertools

import pytest
from gguf import GGUFReader, GGUFWriter, TokenType
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from emomoe.checkpoint import save_model
from emomoe.data.corpus import DOMAINS, embedded_corpus
from emomoe.data.tokenizer import _wrap, train_tokenizer
from emomoe.deploy.gguf import export_gguf
from emomoe.deploy.vocab import CL100K_REGEX, add_vocab, pre_tokenizer_name
from emomoe.errors import DataError
from emomoe.model import ModelConfig, build_model
from tests.deploy.conftest import VOCAB_SIZE, corpus_sample

TEXTS = ["def f(x):\n    return x + 1\n", "Der Satz des Pythagoras. 12345 apples", "中文文本 and 'quotes' don't"] * 20
LINES_PER_DOMAIN = 500


def _bpe(pre_tokenizer, *, normalizer=None, ignore_merges=False, texts=TEXTS, vocab_size=300):
    tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer, "<|endoftext|>", "test")


def _cl100k(**options):
    split = pre_tokenizers.Split(Regex(CL100K_REGEX), behavior="isolated")
    return _bpe(pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                **options)


def test_our_trained_tokenizers_split_as_llama_cpps_gpt2():
    assert pre_tokenizer_name(train_tokenizer(TEXTS, vocab_size=300)) == "gpt-2"


def test_cl100k_style_tokenizers_such_as_dolma2_map_to_the_same_regex():
    assert pre_tokenizer_name(_cl100k()) == "dbrx"
    assert pre_tokenizer_name(_cl100k(ignore_merges=True)) == "llama-bpe"


@pytest.mark.parametrize("make, field", [
    (lambda: _bpe(pre_tokenizers.ByteLevel(add_prefix_space=True)), "add_prefix_space"),
    (lambda: _bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), normalizer=normalizers.NFC()), "normalizer"),
    (lambda: _bpe(pre_tokenizers.Metaspace()), "pre_tokenizer"),
    (lambda: _bpe(pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\d+|\D+"), behavior="isolated"),
                                           pre_tokenizers.ByteLevel(use_regex=False)])), "pre_tokenizer"),
])
def test_other_pre_tokenizers_are_refused_naming_the_field(make, field):
    with pytest.raises(DataError, match=rf"^tokenizer.json: .*{field}"):
        pre_tokenizer_name(make())


def test_the_vocabulary_is_padded_to_the_embedding_rows_and_eos_is_a_control_token(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=300)
    writer = GGUFWriter(tmp_path / "v.gguf", "deepseek")
    add_vocab(writer, tok, num_rows=320)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    fields = GGUFReader(tmp_path / "v.gguf").fields
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == len(types) == 320
    assert tokens[: tok.vocab_size] == [tok.tokenizer.id_to_token(i) for i in range(tok.vocab_size)]
    assert tokens[tok.vocab_size :] == [f"[PAD{i}]" for i in range(tok.vocab_size, 320)]
    assert types[tok.eos_id] == TokenType.CONTROL and set(types[tok.vocab_size :]) == {TokenType.UNUSED}
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_id
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert len(fields["tokenizer.ggml.merges"].contents()) == 300 - 257


def corpus_lines() -> list[str]:
    """500 non-empty lines of each of the 7 domains, spread over the embedded corpus."""
    lines = []
    for domain in DOMAINS:
        docs = embedded_corpus([domain])
        found = (line for doc in itertools.islice(docs, 3, None, 7) for line in doc["text"].split("\n") if line.strip())
        lines += list(itertools.islice(found, LINES_PER_DOMAIN))
    return lines


def _gguf_of(tok, directory):
    """A tiny model with `tok`'s vocabulary, exported with `tok` inside."""
    cfg = ModelConfig.preset("tiny").with_overrides([f"vocab_size={tok.vocab_size}", f"eos_id={tok.eos_id}"])
    checkpoint = save_model(directory / "ckpt", build_model(cfg), cfg)
    tok.save(directory / "tokenizer")
    return export_gguf(checkpoint, directory / "vocab.gguf", type="f32", tokenizer=directory / "tokenizer")


@pytest.mark.slow
@pytest.mark.parametrize("pre", ["gpt-2", "dbrx", "llama-bpe"])
def test_llama_cpp_tokenizes_thousands_of_corpus_lines_as_we_do(llama_cpp, pre, tmp_path):
    """Ours (GPT-2's regex) and cl100k-style ones like the released EMO's dolma2, trained on the corpus."""
    texts = [doc["text"] for doc in corpus_sample()]
    if pre == "gpt-2":
        ours = train_tokenizer(texts, vocab_size=VOCAB_SIZE)
    else:
        ours = _cl100k(ignore_merges=pre == "llama-bpe", texts=texts, vocab_size=VOCAB_SIZE)
    assert pre_tokenizer_name(ours) == pre
    llm = llama_cpp.Llama(model_path=str(_gguf_of(ours, tmp_path)), vocab_only=True, verbose=False)
    lines = corpus_lines()
    assert len(lines) == LINES_PER_DOMAIN * len(DOMAINS)
    mismatches = [line for line in lines if llm.tokenize(line.encode(), add_bos=False, special=False) != ours.encode(line)]
    assert mismatches == []
    # A special token's text inside a document is plain text to both.
    assert llm.tokenize(b"a <|endoftext|> b", add_bos=False, special=False) == ours.encode("a <|endoftext|> b")
