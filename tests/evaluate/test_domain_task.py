import json

import pytest
import yaml

from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.errors import DataError
from emomoe.evaluate.domain_task import DOMAIN_TASK, QUESTION, write_domain_task


def test_items_are_passages_of_their_domain_training_or_held_out_documents(store_dir, tmp_path):
    counts = write_domain_task(store_dir, tmp_path / "t", num_items=3, context_tokens=10, seed=1)
    assert counts == {"train": 9, "test": 9}
    store = TokenStore.open(store_dir)
    decode = load_tokenizer(store.tokenizer_path).decode
    docs = {split: {d: [decode(t) for _, t in store.documents(split, [d])] for d in store.domains} for split in Split}
    config = yaml.safe_load((tmp_path / "t" / f"{DOMAIN_TASK}.yaml").read_text())
    assert config["doc_to_choice"] == store.domains == ["code", "legal", "math"]
    for task_split, split in (("train", Split.TRAIN), ("test", Split.VAL)):
        items = [json.loads(line) for line in open(config["dataset_kwargs"]["data_files"][task_split])]
        assert sorted(i["label"] for i in items) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        for item in items:
            passage = item["prompt"].removeprefix("Passage: ").removesuffix(f"\nQuestion: {QUESTION}\nAnswer:")
            assert any(passage in doc for doc in docs[split][store.domains[item["label"]]])
            others = [doc for d in store.domains if d != store.domains[item["label"]] for doc in docs[split][d]]
            assert not any(passage in doc for doc in others)


def test_a_domain_without_a_long_enough_document_is_an_error(store_dir, tmp_path):
    with pytest.raises(DataError, match="domain 'code' has no training document of at least 500 tokens"):
        write_domain_task(store_dir, tmp_path / "t", context_tokens=500)
    assert not (tmp_path / "t").exists()
