from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from emomoe.data.loader import IGNORE_INDEX, DataConfig, TrainLoader, eval_batches, has_repetition
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError, DataError
from emomoe.model.docs import doc_ids_from_eos

SEQ = 16


def _cfg(store_path: Path, **kw) -> DataConfig:
    return DataConfig.from_dict({"store": str(store_path), "seq_len": SEQ, "batch_size": 3, "seed": 7, **kw})


def _stream(store: TokenStore, split: str, domains=None) -> tuple[list[int], list[int], list[int]]:
    """Slow reference: the packed stream token by token, with each token's domain and document."""
    tokens, domains_, docs = [], [], []
    for doc_number, (name, t) in enumerate(store.documents(split, domains)):
        tokens += t.tolist()
        domains_ += [store.domains.index(name)] * len(t)
        docs += [doc_number] * len(t)
    return tokens, domains_, docs


def _rows(batch) -> list[tuple[int, ...]]:
    return [tuple(r) for r in torch.cat([batch["input_ids_BS"], batch["labels_BS"][:, -1:]], 1).tolist()]


def test_config_validation_names_the_field(store_path: Path) -> None:
    for bad, field in [({"seq_len": 0}, "seq_len"), ({"batch_size": -1}, "batch_size"), ({"seed": -2}, "seed"),
                       ({"domains": []}, "domains"), ({"domains": ["a", "a"]}, "domains")]:
        with pytest.raises(ConfigError, match=field):
            _cfg(store_path, **bad)
    cfg = _cfg(store_path, domains=["code"])
    assert DataConfig.from_dict(cfg.to_dict()) == cfg


def test_batches_line_up_with_the_store(store: TokenStore, store_path: Path) -> None:
    tokens, domains, docs = _stream(store, "train")
    loader = TrainLoader(store, _cfg(store_path))
    for _ in range(20):
        batch = next(loader)
        assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == {
            k: (torch.int64, (3, SEQ)) for k in ("input_ids_BS", "labels_BS", "doc_ids_BS", "domain_ids_BS")
        } | {"filtered_B": (torch.bool, (3,))}
        assert torch.equal(batch["labels_BS"][:, :-1], batch["input_ids_BS"][:, 1:])
        assert torch.equal(batch["doc_ids_BS"], doc_ids_from_eos(batch["input_ids_BS"], store.eos_id))
        for row in range(3):
            ids = batch["input_ids_BS"][row].tolist()
            start = next(s for s in range(0, len(tokens), SEQ) if tokens[s : s + SEQ] == ids)
            assert batch["domain_ids_BS"][row].tolist() == domains[start : start + SEQ]
            # Doc ids count documents from the row start; a document's EOS belongs to it.
            first = docs[start]
            assert batch["doc_ids_BS"][row].tolist() == [d - first for d in docs[start : start + SEQ]]


def test_one_epoch_covers_every_window_once(store: TokenStore, store_path: Path) -> None:
    tokens, _, _ = _stream(store, "train")
    loader = TrainLoader(store, _cfg(store_path, batch_size=1))
    rows = [_rows(next(loader))[0] for _ in range(loader.num_windows)]
    expected = [tuple(tokens[s : s + SEQ + 1]) for s in range(0, (len(tokens) - 1) // SEQ * SEQ, SEQ)]
    assert Counter(rows) == Counter(expected)
    assert loader.epoch == 1
    next_epoch = [_rows(next(loader))[0] for _ in range(loader.num_windows)]
    assert Counter(next_epoch) == Counter(expected) and next_epoch != rows  # reshuffled


def test_same_seed_same_batches_other_seed_other_batches(store: TokenStore, store_path: Path) -> None:
    def first(seed: int) -> list:
        loader = TrainLoader(store, _cfg(store_path, seed=seed))
        return [_rows(next(loader)) for _ in range(3)]

    assert first(1) == first(1)
    assert first(1) != first(2)


def test_resume_gives_identical_batches(store: TokenStore, store_path: Path) -> None:
    cfg = _cfg(store_path)
    straight = TrainLoader(store, cfg)
    expected = [_rows(next(straight)) for _ in range(40)]  # runs past an epoch boundary
    first = TrainLoader(store, cfg)
    got = [_rows(next(first)) for _ in range(17)]
    resumed = TrainLoader(str(store_path), cfg)
    resumed.load_state_dict(first.state_dict())
    got += [_rows(next(resumed)) for _ in range(23)]
    assert got == expected


def test_two_ranks_split_the_global_batch_without_overlap_or_gap(store: TokenStore, store_path: Path) -> None:
    single = TrainLoader(store, _cfg(store_path, batch_size=4))
    ranks = [TrainLoader(store, _cfg(store_path, batch_size=2), rank=r, world_size=2) for r in range(2)]
    for _ in range(15):
        assert _rows(next(ranks[0])) + _rows(next(ranks[1])) == _rows(next(single))
    # Rank states are global: a run on two ranks resumes on one.
    one = TrainLoader(store, _cfg(store_path, batch_size=4))
    one.load_state_dict(ranks[0].state_dict())
    assert _rows(next(one)) == _rows(next(single))


def test_resume_refuses_another_data_order(store: TokenStore, store_path: Path) -> None:
    state = TrainLoader(store, _cfg(store_path)).state_dict()
    other = TrainLoader(store, _cfg(store_path, seq_len=SEQ + 1))
    with pytest.raises(DataError, match=r"cannot resume the data order: saved seq_len 16 differs from the current 17"):
        other.load_state_dict(state)


def test_resume_on_other_ranks_must_keep_the_global_batch(store: TokenStore, store_path: Path) -> None:
    state = TrainLoader(store, _cfg(store_path, batch_size=1), rank=1, world_size=4).state_dict()
    TrainLoader(store, _cfg(store_path, batch_size=2), rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ConfigError, match=r"hold 4 sequences over all processes, this run's 2 \(2 x 1\); set data\.batch_size=2$"):
        TrainLoader(store, _cfg(store_path, batch_size=1), world_size=2).load_state_dict(state)
    with pytest.raises(ConfigError, match=r"this run's 3 \(3 x 1\); run a number of processes that divides 4$"):
        TrainLoader(store, _cfg(store_path, batch_size=1), world_size=3).load_state_dict(state)


def test_domain_restriction(store: TokenStore, store_path: Path) -> None:
    loader = TrainLoader(store, _cfg(store_path, domains=["german", "chinese"]))
    wanted = {store.domains.index("german"), store.domains.index("chinese")}
    seen = set(itertools.chain.from_iterable(next(loader)["domain_ids_BS"].flatten().tolist() for _ in range(30)))
    assert seen == wanted


def test_training_windows_never_contain_validation_documents(store: TokenStore, store_path: Path) -> None:
    val_docs = {tuple(t.tolist()) for _, t in store.documents("val")}
    train_docs = {tuple(t.tolist()) for _, t in store.documents("train")}
    loader = TrainLoader(store, _cfg(store_path, batch_size=1))
    for _ in range(loader.num_windows):
        row = list(_rows(next(loader))[0])
        ends = [i for i, t in enumerate(row) if t == store.eos_id]
        for a, b in zip(ends, ends[1:]):  # documents wholly inside the window
            doc = tuple(row[a + 1 : b + 1])
            assert doc in train_docs and doc not in val_docs


def test_seq_len_longer_than_the_data(store: TokenStore, store_path: Path) -> None:
    size = store.num_tokens("train", ["german"])
    with pytest.raises(DataError, match=rf"seq_len {size} is longer than the train data of domains german \({size} tokens"):
        TrainLoader(store, _cfg(store_path, seq_len=size, domains=["german"]))
    with pytest.raises(ConfigError, match="rank 2 is outside world size 2"):
        TrainLoader(store, _cfg(store_path), rank=2, world_size=2)


def test_eval_covers_every_held_out_token_once(store: TokenStore) -> None:
    batches = list(eval_batches(store, seq_len=SEQ, batch_size=4))
    labels = torch.cat([b["labels_BS"] for b in batches])
    inputs = torch.cat([b["input_ids_BS"] for b in batches])
    domains = torch.cat([b["domain_ids_BS"] for b in batches])
    counted = labels != IGNORE_INDEX
    for d, name in enumerate(store.domains):  # every token but the first of each domain is a label
        assert int((counted & (domains == d)).sum()) == store.num_tokens("val", [name]) - 1
    assert all(len(set(row.tolist())) == 1 for row in domains)  # one domain per row
    for b in batches:
        assert torch.equal(b["doc_ids_BS"], doc_ids_from_eos(b["input_ids_BS"], store.eos_id))
    assert (inputs[~counted] == store.eos_id).sum() > 0  # padding is EOS, not a real token id


def test_eval_options(store: TokenStore) -> None:
    limited = list(eval_batches(store, "train", seq_len=SEQ, batch_size=2, domains=["code"], max_windows_per_domain=3))
    assert sum(len(b["input_ids_BS"]) for b in limited) == 3
    code = store.domains.index("code")
    assert all((b["domain_ids_BS"] == code).all() for b in limited)
    with pytest.raises(DataError, match="no domain 'nope'"):
        list(eval_batches(store, seq_len=SEQ, batch_size=2, domains=["nope"]))
    with pytest.raises(ConfigError, match="must be positive"):
        list(eval_batches(store, seq_len=0, batch_size=2))


def test_mix_store_trains_and_evaluates(tmp_path: Path) -> None:
    eos = 7
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(0, 7, rng.integers(1, 9))) + [eos] for _ in range(40)]
    np.save(tmp_path / "a.npy", np.concatenate(docs[:30]).astype(np.uint16))
    np.concatenate(docs[30:]).astype("<u2").tofile(tmp_path / "v.bin")
    (tmp_path / "mix.yaml").write_text(
        "eos_id: 7\nvocab_size: 8\nentries:\n- {domain: a, paths: [a.npy]}\n- {domain: a, paths: [v.bin], split: val}\n")
    cfg = DataConfig(store=str(tmp_path / "mix.yaml"), seq_len=8, batch_size=2)
    batch = next(TrainLoader(None, cfg))
    assert torch.equal(batch["doc_ids_BS"], doc_ids_from_eos(batch["input_ids_BS"], eos))
    val = list(eval_batches(cfg.store, seq_len=8, batch_size=2))
    assert int(sum((b["labels_BS"] != IGNORE_INDEX).sum() for b in val)) == sum(map(len, docs[30:])) - 1


@pytest.mark.parametrize("period", [1, 3, 13])
def test_repetition_needs_32_back_to_back_copies_of_an_ngram_up_to_13_tokens(period: int) -> None:
    rng = np.random.default_rng(period)
    gram = np.arange(100, 100 + period)
    noise = rng.integers(1000, 2000, 40)  # no repeats of its own
    for copies, found in [(31, False), (32, True)]:
        tokens = np.concatenate([noise[:20], np.tile(gram, copies), noise[20:]])
        assert has_repetition(tokens) is found
    assert not has_repetition(np.tile(np.arange(100, 114), 40))  # a 14-gram is too long to count


def test_repetition_filter_drops_whole_windows_from_the_loss(tmp_path: Path) -> None:
    from tests.fixtures import build_store, word_documents

    docs = word_documents({"prose": "the a river house walked quietly evening letter".split()}, 30, num_words=(20, 60))
    docs.insert(10, {"text": " ".join(["na"] * 300), "domain": "prose", "source": "repeats"})
    store_path = build_store(docs, tmp_path / "store", vocab_size=300, val_fraction=0.1)
    plain = TrainLoader(None, _cfg(store_path, seq_len=64, batch_size=8))
    filtered = TrainLoader(None, _cfg(store_path, seq_len=64, batch_size=8, repetition_filter=True))
    dropped = kept = 0
    for _ in range(-(-plain.num_windows // 8)):
        a, b = next(plain), next(filtered)
        assert torch.equal(a["input_ids_BS"], b["input_ids_BS"]) and (a["labels_BS"] != IGNORE_INDEX).all()
        rows = torch.cat([a["input_ids_BS"], a["labels_BS"][:, -1:]], 1).numpy()
        assert not a["filtered_B"].any()
        for row, labels, flagged in zip(rows, b["labels_BS"], b["filtered_B"]):
            assert bool(flagged) is has_repetition(row)
            if has_repetition(row):
                assert (labels == IGNORE_INDEX).all()
                dropped += 1
            else:
                assert torch.equal(labels, torch.from_numpy(row[1:]))
                kept += 1
    assert dropped >= 2 and kept > dropped
