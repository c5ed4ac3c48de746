import json
import random

import pytest
import yaml

from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import load_tokenizer, train_tokenizer
from emomoe.errors import DataError
from emomoe.evaluate.continuation import (
    GROUP, char_boundary, continuation_items, task_name, write_continuation_tasks,
)
from tests.fixtures import build_store, word_documents


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    words = {"en": "alpha beta gamma delta epsilon".split(), "zh": list("专家模型路由训练数据")}
    docs = word_documents(words, 24, num_words=(60, 140))
    return build_store(docs, tmp_path_factory.mktemp("c") / "store", vocab_size=300, val_fraction=0.25)


def test_char_boundary_moves_a_cut_out_of_a_split_character():
    tok = train_tokenizer(["ab 专家 cd"], vocab_size=257)  # bytes only: each CJK character is 3 tokens
    tokens = tok.encode("ab专家")
    assert len(tokens) == 8
    assert [char_boundary(tok.decode, tokens, p) for p in range(9)] == [0, 1, 2, 5, 5, 5, 8, 8, 8]


def test_items_pair_a_passage_with_what_follows_it_and_three_passages_from_other_documents():
    rng = random.Random(0)
    documents = [random.Random(d).choices(range(0x4E00, 0x9FFF), k=40 + 7 * d) for d in range(5)]
    decode = lambda ids: "".join(chr(i) for i in ids)  # one character per token  # noqa: E731
    items = continuation_items(documents, decode, num_items=6, context_tokens=8, continuation_tokens=3, rng=rng)
    assert len(items) == 6
    assert len({item["document"] for item in items}) == 5  # round-robin over the documents first
    for item in items:
        source = decode(documents[item["document"]])
        truth = item["choices"][item["label"]]
        assert len(item["choices"]) == 4 == len(set(item["choices"]))
        assert len(item["context"]) == 8 and item["context"] + truth in source
        for i, choice in enumerate(item["choices"]):
            if i != item["label"]:
                assert choice not in source and any(choice in decode(d) for d in documents)
    again = continuation_items(
        documents, decode, num_items=6, context_tokens=8, continuation_tokens=3, rng=random.Random(0)
    )
    assert again == items


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
