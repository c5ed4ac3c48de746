import gzip
import json

import pytest
import torch
from hypothesis import given

from emomoe.data.pairs import Example, PairLoader, pair_batch, read_pairs
from emomoe.errors import DataError
from tests.fixtures import damaged, fuzz_settings, only_our_errors

IGNORE = -100
EOS = 0


def test_labels_cover_the_answer_and_eos_only_when_asked():
    examples = [Example([5, 6, 7], [8, 9]), Example([3], [4])]
    batch = pair_batch(examples, EOS, seq_len=16, answer_only=True)
    assert batch["input_ids_BS"].tolist() == [[5, 6, 7, 8, 9], [3, 4, EOS, EOS, EOS]]
    assert batch["labels_BS"].tolist() == [[IGNORE, IGNORE, 8, 9, EOS], [4, EOS, IGNORE, IGNORE, IGNORE]]
    full = pair_batch(examples, EOS, seq_len=16, answer_only=False)
    assert full["labels_BS"].tolist() == [[6, 7, 8, 9, EOS], [4, EOS, IGNORE, IGNORE, IGNORE]]
    # Each row is one document; the padding after its EOS is not part of it.
    assert batch["doc_ids_BS"][0].tolist() == [0] * 5 and batch["doc_ids_BS"][1].tolist()[:2] == [0, 0]


def test_long_examples_are_cut_to_the_window_keeping_the_answer_when_only_it_is_learned():
    batch = pair_batch([Example([1, 2, 3, 4], [5, 6, 7])], EOS, seq_len=5, answer_only=True)
    assert batch["input_ids_BS"].tolist() == [[3, 4, 5, 6, 7]]  # the prompt loses its beginning
    assert batch["labels_BS"].tolist() == [[IGNORE, 5, 6, 7, EOS]]
    batch = pair_batch([Example([1, 2, 3, 4, 5, 6], [7])], EOS, seq_len=2, answer_only=True)
    assert batch["input_ids_BS"].tolist() == [[6, 7]] and batch["labels_BS"].tolist() == [[7, EOS]]
    whole = pair_batch([Example([1, 2, 3, 4], [5, 6, 7])], EOS, seq_len=5, answer_only=False)
    assert whole["input_ids_BS"].tolist() == [[1, 2, 3, 4, 5]]
    assert whole["labels_BS"].tolist() == [[2, 3, 4, 5, 6]]


def test_an_empty_prompt_makes_every_token_a_label():
    batch = pair_batch([Example([], [8, 9])], EOS, seq_len=8, answer_only=True)
    assert batch["labels_BS"].tolist() == [[9, EOS]]


def test_read_pairs_tokenizes_prompt_and_answer_apart(tmp_path, tokenizer):
    path = tmp_path / "qa.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"prompt": "licensee shall", "answer": " grant"}) + "\n\n")
        f.write(json.dumps({"prompt": "", "answer": "copyright"}) + "\n")
    examples = read_pairs(path, tokenizer)
    assert examples == [
        Example(tokenizer.encode("licensee shall"), tokenizer.encode(" grant")),
        Example([], tokenizer.encode("copyright")),
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "qa.jsonl:2: not valid JSON"),
        ("[1, 2]", "qa.jsonl:2: expected a JSON object"),
        ('{"prompt": "a"}', "qa.jsonl:2: expected a string field 'answer'"),
        ('{"prompt": "a", "answer": ""}', "qa.jsonl:2: empty answer field"),
    ],
)
def test_bad_records_name_their_line(tmp_path, tokenizer, line, message):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=message):
        read_pairs(path, tokenizer)


def test_a_binary_file_is_one_error_naming_it(tmp_path, tokenizer):
    path = tmp_path / "model.bin"
    path.write_bytes(b'{"prompt": "a", "answer": "b"}\n\x89PNG\r\n\x1a\n\x00\xff\xfe\n')
    with pytest.raises(DataError, match=r"model\.bin:2: not UTF-8 text \(byte 0 of the line\)$"):
        read_pairs(path, tokenizer)


def test_missing_or_empty_files_are_refused(tmp_path, tokenizer):
    with pytest.raises(DataError, match="no such prompt/answer file"):
        read_pairs(tmp_path / "none.jsonl", tokenizer)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no prompt/answer records"):
        read_pairs(tmp_path / "empty.jsonl", tokenizer)


def test_loader_visits_every_example_once_per_epoch_and_reshuffles():
    examples = [Example([i], [100 + i]) for i in range(1, 7)]
    loader = PairLoader(examples, EOS, seq_len=4, batch_size=3, answer_only=True, seed=1)
    firsts = [next(loader)["input_ids_BS"][:, 0].tolist() for _ in range(4)]
    epoch0, epoch1 = firsts[0] + firsts[1], firsts[2] + firsts[3]
    assert sorted(epoch0) == sorted(epoch1) == list(range(1, 7))
    assert epoch0 != epoch1
    again = PairLoader(examples, EOS, seq_len=4, batch_size=3, answer_only=True, seed=1)
    assert torch.equal(next(again)["input_ids_BS"], pair_batch(
        [examples[i - 1] for i in firsts[0]], EOS, seq_len=4, answer_only=True)["input_ids_BS"])


def test_loader_state_resumes_the_order_and_refuses_other_data():
    examples = [Example([i], [100 + i]) for i in range(1, 8)]
    loader = PairLoader(examples, EOS, seq_len=4, batch_size=3, answer_only=True, seed=2)
    next(loader), next(loader)
    state = loader.state_dict()
    expected = next(loader)
    resumed = PairLoader(examples, EOS, seq_len=4, batch_size=3, answer_only=True, seed=2)
    resumed.load_state_dict(state)
    assert torch.equal(next(resumed)["input_ids_BS"], expected["input_ids_BS"])
    other = PairLoader(examples[:-1], EOS, seq_len=4, batch_size=3, answer_only=True, seed=2)
    with pytest.raises(DataError, match="num_examples"):
        other.load_state_dict(state)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_fuzz_a_damaged_pair_file_raises_only_our_errors(tmp_path, tokenizer, suffix):
    plain = "".join(json.dumps({"prompt": f"q{i} é", "answer": f"a{i}"}) + "\n" for i in range(4)).encode()
    valid = gzip.compress(plain) if suffix == ".jsonl.gz" else plain
    path = tmp_path / f"qa{suffix}"

    @fuzz_settings()
    @given(damaged(valid))
    def read(data):
        path.write_bytes(data)
        only_our_errors(read_pairs, path, tokenizer)

    read()
