from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given

from emomoe.data.store import METADATA_FILE, TokenStore
from emomoe.data.tokenizer import load_tokenizer, train_tokenizer
from emomoe.errors import DataError
from tests.fixtures import damaged, fuzz_settings, only_our_errors

ASSETS_STORE = Path(__file__).resolve().parents[1] / "assets" / "store"


def test_store_matches_its_metadata(store: TokenStore) -> None:
    meta = json.loads((store.path / METADATA_FILE).read_text())
    assert store.domains == meta["domains"] == ["chinese", "code", "german", "legal"]
    assert (store.vocab_size, store.eos_id, store.tokenizer_hash) == (meta["vocab_size"], meta["eos_id"], meta["tokenizer_hash"])
    for split in ("train", "val"):
        assert store.num_tokens(split) == meta["num_tokens"][split]
        for domain in store.domains:
            docs = [t for d, t in store.documents(split, [domain])]
            assert len(docs) == meta["counts"][split][domain]["num_documents"] > 0
            assert sum(map(len, docs)) == meta["counts"][split][domain]["num_tokens"]
    assert all(s.tokens.dtype == np.uint16 for s in store.shards("train"))


def test_documents_end_with_one_eos(store: TokenStore) -> None:
    for _, tokens in store.documents("train"):
        assert tokens[-1] == store.eos_id
        assert (tokens[:-1] != store.eos_id).all()


def test_shards_are_one_domain_each(store: TokenStore) -> None:
    code = store.domains.index("code")
    shards = store.shards("train", ["code"])
    assert shards and all(s.domain == code and (s.index["domain"] == code).all() for s in shards)
    assert len(store.shards("train")) > len(store.domains)  # the fixture store has several chunks


def test_store_carries_its_tokenizer(store: TokenStore, tokenizer, corpus_docs) -> None:
    loaded = load_tokenizer(store.tokenizer_path)
    store.check_tokenizer(loaded)
    assert loaded.hash == tokenizer.hash
    other = train_tokenizer((d["text"] for d in corpus_docs), vocab_size=350)
    with pytest.raises(DataError, match=r"tokenizer does not match the store \(vocab 350 vs 400"):
        store.check_tokenizer(other)


def test_unknown_domain_names_the_choices(store: TokenStore) -> None:
    with pytest.raises(DataError, match=r"no domain 'klingon' \(domains: chinese, code, german, legal\)"):
        store.shards("train", ["klingon"])


def test_unknown_split(store: TokenStore) -> None:
    with pytest.raises(DataError, match=r"no split 'test' \(splits: train, val\)"):
        store.shards("test")


def test_summary_lists_every_domain(store: TokenStore) -> None:
    lines = store.summary().splitlines()
    assert [line.split()[0] for line in lines[1:]] == store.domains


def _copy(store_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(store_path, tmp_path / "copy"))


def test_truncated_shard_names_the_file(store_path: Path, tmp_path: Path) -> None:
    copy = _copy(store_path, tmp_path)
    victim = sorted((copy / "train").glob("c*-d*[0-9].npy"))[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DataError, match=rf"{victim.name}: not a readable \.npy token array .*truncated"):
        TokenStore.open(copy)


def test_metadata_that_disagrees_with_an_array(store_path: Path, tmp_path: Path) -> None:
    copy = _copy(store_path, tmp_path)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["shards"]["val"][0]["num_tokens"] += 1
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"metadata\.json says .*; the store is damaged"):
        TokenStore.open(copy)
    (copy / METADATA_FILE).write_text("{")
    with pytest.raises(DataError, match=r"metadata\.json: not valid JSON"):
        TokenStore.open(copy)


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="token store not found"):
        TokenStore.open(tmp_path / "absent")
    with pytest.raises(DataError, match=r"not a token store \(no metadata\.json\)"):
        TokenStore.open(tmp_path)
    (tmp_path / ".half.partial").mkdir()
    with pytest.raises(DataError, match="half: token store is incomplete"):
        TokenStore.open(tmp_path / "half")


# Pre-tokenized arrays without an index (OLMo-core / Dolma layout), opened through a mix file.

def _dolma_arrays(tmp_path: Path) -> dict[str, list[list[int]]]:
    eos, docs = 100257, {}
    rng = np.random.default_rng(0)
    for name in ("web", "code", "val-web"):
        docs[name] = [list(rng.integers(1, 100000, rng.integers(1, 30))) + [eos] for _ in range(20)]
    np.save(tmp_path / "web-0.npy", np.concatenate(docs["web"][:10]).astype(np.uint32))
    np.save(tmp_path / "web-1.npy", np.concatenate(docs["web"][10:]).astype(np.uint32))
    np.concatenate(docs["code"]).astype("<u4").tofile(tmp_path / "code.bin")
    np.save(tmp_path / "val-web.npy", np.concatenate(docs["val-web"]).astype(np.uint32))
    return docs


def _mix(tmp_path: Path, **fields) -> Path:
    mix = {
        "eos_id": 100257,
        "vocab_size": 100278,
        "entries": [
            {"domain": "web", "paths": ["web-*.npy"]},
            {"domain": "code", "paths": ["code.bin"]},
            {"domain": "web", "paths": ["val-web.npy"], "split": "val"},
        ],
        **fields,
    }
    path = tmp_path / "mix.yaml"
    path.write_text(yaml.safe_dump(mix))
    return path


def test_mix_of_arrays_without_index(tmp_path: Path) -> None:
    docs = _dolma_arrays(tmp_path)
    store = TokenStore.open(_mix(tmp_path))
    assert store.domains == ["web", "code"]
    assert (store.eos_id, store.vocab_size) == (100257, 100278)
    got = Counter((d, tuple(t.tolist())) for d, t in store.documents("train"))
    want = Counter([("web", tuple(x)) for x in docs["web"]] + [("code", tuple(x)) for x in docs["code"]])
    assert got == want
    assert [t.tolist() for _, t in store.documents("val")] == docs["val-web"]
    assert len(store.shards("train", ["web"])) == 2  # the glob matched both files


def test_mix_errors(tmp_path: Path, tokenizer) -> None:
    _dolma_arrays(tmp_path)
    with pytest.raises(DataError, match=r"web-0\.npy: token id \d+ is outside the vocabulary of 50000"):
        TokenStore.open(_mix(tmp_path, vocab_size=50000))
    with pytest.raises(DataError, match=r"mix\.yaml: unknown config key 'eos'"):
        TokenStore.open(_mix(tmp_path, eos=1))
    with pytest.raises(DataError, match="eos_id: give eos_id and vocab_size, or a tokenizer"):
        TokenStore.open(_mix(tmp_path, eos_id=None))
    tokenizer.save(tmp_path / "tok")
    with pytest.raises(DataError, match=r"tokenizer\.json: EOS id 100257 is outside the vocabulary \(400 tokens\)"):
        TokenStore.open(_mix(tmp_path, tokenizer="tok"))
    with pytest.raises(DataError, match=r"mix\.yaml: vocab_size 100278 does not match tokenizer tok \(400\)"):
        TokenStore.open(_mix(tmp_path, tokenizer="tok", eos_id=tokenizer.eos_id))
    path = _mix(tmp_path)
    (tmp_path / "code.bin").unlink()
    with pytest.raises(DataError, match=r"code\.bin: token array not found"):
        TokenStore.open(path)


def test_mix_takes_vocab_and_eos_from_its_tokenizer(tmp_path: Path, tokenizer) -> None:
    tokenizer.save(tmp_path / "tok")
    np.save(tmp_path / "a.npy", np.array([5, 6, tokenizer.eos_id, 7, tokenizer.eos_id], np.uint16))
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"tokenizer": "tok", "entries": [{"domain": "a", "paths": ["a.npy"]}]}))
    store = TokenStore.open(path)
    assert (store.vocab_size, store.eos_id, store.tokenizer_hash) == (tokenizer.vocab_size, tokenizer.eos_id, tokenizer.hash)
    store.check_tokenizer(load_tokenizer(store.tokenizer_path))
    assert [t.tolist() for _, t in store.documents("train")] == [[5, 6, tokenizer.eos_id], [7, tokenizer.eos_id]]


def test_the_shipped_mix_example_reads_like_its_store():
    assets = Path(__file__).resolve().parents[1] / "assets"
    mix, store = TokenStore.open(assets / "mix.yaml"), TokenStore.open(assets / "store")
    assert mix.domains == store.domains and mix.tokenizer_hash == store.tokenizer_hash
    for split in ("train", "val"):
        for domain in store.domains:
            assert mix.num_tokens(split, [domain]) == store.num_tokens(split, [domain])
            assert [t.tolist() for _, t in mix.documents(split, [domain])] == [t.tolist() for _, t in store.documents(split, [domain])]


def test_a_missing_mix_file_points_at_the_format(tmp_path):
    with pytest.raises(DataError, match="mix file not found .*docs/data.md"):
        TokenStore.open(tmp_path / "olmoe-mix.yaml")


@pytest.mark.parametrize("file", [METADATA_FILE, "val/c00000-d001.npy", "val/c00000-d001.index.npy"])
def test_fuzz_a_damaged_store_raises_only_our_errors(tmp_path, file):
    store = shutil.copytree(ASSETS_STORE, tmp_path / "store")
    valid = (store / file).read_bytes()

    @fuzz_settings()
    @given(damaged(valid))
    def read(data):
        (store / file).write_bytes(data)
        opened = only_our_errors(TokenStore.open, store)
        if opened is not None:
            only_our_errors(lambda: [len(t) for split in ("train", "val") for _, t in opened.documents(split)])

    read()
