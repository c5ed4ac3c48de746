import json
import random

import pytest
import yaml

from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import load_tokenizer, train_tokenizer
from emomoe.errors import DataError
from emomoe.evaluate.continuation import (
    GROUP,
    clean_cut,
    continuation_items,
    task_name,
    write_continuation_tasks,
)
from tests.fixtures import build_store, word_documents


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    words = {"en": "alpha beta gamma delta epsilon".split(), "zh": list("专家模型路由训练数据")}
    docs = word_documents(words, 24, num_words=(60, 140))
    return build_store(docs, tmp_path_factory.mktemp("c") / "store", vocab_size=300, val_fraction=0.25)


def test_cuts_fall_between_words_never_after_whitespace_nor_inside_a_character():
    tok = train_tokenizer(["gamma delta " * 50, "ab 专家 cd"], vocab_size=275)
    tokens = tok.encode("gamma deltas\n gamma1 b")
    pieces = [tok.decode([t]) for t in tokens]
    assert pieces == ["gamma", " delta", "s", "\n", " gamma", "1", " ", "b"]
    # Not inside "deltas", not after a line break or a space, not between "gamma" and "1".
    assert [clean_cut(tok, tokens, p) for p in range(9)] == [0, 1, 3, 3, 6, 6, 6, 8, 8]
    tokens = tok.encode("ab专家 cd")  # each CJK character is 3 byte tokens, and "ab专家" is one word
    assert [clean_cut(tok, tokens, p) for p in range(1, 9)] == [8] * 8


def _word_documents(num_docs=5):
    """Documents of random words, each with words of its own (alpha3 beta3 ...)."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    return [" ".join(f"{w}{d}" for w in rng.choices(words, k=30 + 6 * d)) for d in range(num_docs)]


def test_items_pair_a_passage_with_what_follows_it_and_three_passages_from_other_documents():
    texts = _word_documents()
    tok = train_tokenizer(texts, vocab_size=300)
    documents = [tok.encode(t) for t in texts]
    args = {"num_items": 6, "context_tokens": 8, "continuation_tokens": 3}
    items = continuation_items(documents, tok, rng=random.Random(0), **args)
    assert len(items) == 6
    assert len({item["document"] for item in items}) == 5  # round-robin over the documents first
    for item in items:
        source = texts[item["document"]]
        truth = item["choices"][item["label"]]
        assert len(item["choices"]) == 4 == len(set(item["choices"]))
        assert item["context"] + truth in source
        for i, choice in enumerate(item["choices"]):
            assert choice.startswith(" ")  # every choice starts a word
            if i != item["label"]:
                assert choice not in source and any(choice in t for t in texts)
    assert continuation_items(documents, tok, rng=random.Random(0), **args) == items


def test_written_tasks_hold_held_out_text_and_name_their_local_data(store, tmp_path):
    counts = write_continuation_tasks(store, tmp_path / "tasks", num_items=5, context_tokens=24, continuation_tokens=6)
    assert counts == {task_name("en"): 5, task_name("zh"): 5}
    opened = TokenStore.open(store)
    decode = load_tokenizer(opened.tokenizer_path).decode
    held_out = [decode(tokens) for _, tokens in opened.documents(Split.VAL, ["zh"])]
    config = yaml.safe_load((tmp_path / "tasks" / f"{task_name('zh')}.yaml").read_text())
    data_file = config["dataset_kwargs"]["data_files"]["test"]
    assert config["output_type"] == "multiple_choice" and data_file.startswith("/")
    for line in open(data_file):
        item = json.loads(line)
        assert any(item["context"] + item["choices"][item["label"]] in doc for doc in held_out)
    group = yaml.safe_load((tmp_path / "tasks" / f"{GROUP}.yaml").read_text())
    assert group["group"] == GROUP and group["task"] == list(counts)


def test_a_domain_without_enough_long_held_out_documents_is_an_error(store, tmp_path):
    with pytest.raises(DataError, match="domain 'en' has too few held-out documents of at least 1000 tokens"):
        write_continuation_tasks(store, tmp_path / "t", domains=["en"], context_tokens=900, continuation_tokens=100)
    assert not (tmp_path / "t").exists()


def test_every_domain_gets_a_task_of_its_own():
    names = ["code", "数学", "代码", "Code", "us-law", "us_law"]
    tasks = [task_name(d) for d in names]
    assert len(set(tasks)) == len(names)
    assert tasks[0] == f"{GROUP}_code" and tasks[5] == f"{GROUP}_us_law"  # clean names are kept as they are
    assert tasks[3].startswith(f"{GROUP}_code_") and tasks[1] != tasks[2]


def test_a_short_domain_is_left_out_with_a_warning_and_the_others_run(tmp_path, capsys):
    words = {"long": "alpha beta gamma delta epsilon".split(), "short": "x y".split()}
    docs = word_documents(words, 12, num_words=(60, 90)) + word_documents({"tiny": ["z"]}, 6, num_words=(2, 3))
    store = build_store(docs, tmp_path / "store", vocab_size=280, val_fraction=0.3)
    counts = write_continuation_tasks(store, tmp_path / "t", num_items=3, context_tokens=16, continuation_tokens=4)
    assert set(counts) == {task_name("long"), task_name("short")}
    assert "domain 'tiny' has too few held-out documents of at least 20 tokens for the continuation task (need 2); " \
           "its task is left out" in capsys.readouterr().err


def test_the_train_split_comes_from_training_documents_and_the_test_split_is_as_before(store, tmp_path):
    args = {"num_items": 3, "context_tokens": 24, "continuation_tokens": 6}
    write_continuation_tasks(store, tmp_path / "tasks", seed=2, **args)
    opened = TokenStore.open(store)
    tok = load_tokenizer(opened.tokenizer_path)
    config = yaml.safe_load((tmp_path / "tasks" / f"{task_name('en')}.yaml").read_text())
    assert config["training_split"] == "train" == config["fewshot_split"]
    files = config["dataset_kwargs"]["data_files"]
    train = [json.loads(line) for line in open(files["train"])]
    training_docs = [tok.decode(t) for _, t in opened.documents(Split.TRAIN, ["en"])]
    assert len(train) == 3 and all(any(i["context"] + i["choices"][i["label"]] in d for d in training_docs) for i in train)
    # The test items are those of the task before it had a train split: the held-out documents, the same draw.
    held_out = [t[:-1].tolist() for _, t in opened.documents(Split.VAL, ["en"])]
    before = continuation_items(held_out, tok, rng=random.Random("2:en"), **args)
    assert [json.loads(line) for line in open(files["test"])] == before
