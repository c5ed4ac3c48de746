from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.data import arrays
from emomoe.data.arrays import index_from_eos, index_path, open_tokens, read_index, token_dtype, write_shard
from emomoe.errors import DataError

EOS = 0


def _docs_reference(tokens: list[int]) -> list[list[int]]:
    """Split after every EOS, one token at a time; a tail without EOS is a document too."""
    docs, current = [], []
    for t in tokens:
        current.append(t)
        if t == EOS:
            docs.append(current)
            current = []
    if current:
        docs.append(current)
    return docs


def test_dtype_follows_the_vocab() -> None:
    assert token_dtype(8192) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(100278) == np.uint32


@settings(max_examples=80, deadline=None)
@given(tokens=st.lists(st.integers(0, 4), max_size=60), block=st.sampled_from([1, 3, 1 << 24]))
def test_index_from_eos_matches_reference(tokens: list[int], block: int) -> None:
    original = arrays._SCAN_BLOCK
    arrays._SCAN_BLOCK = block  # blocks must not change the answer
    try:
        index = index_from_eos(np.array(tokens, np.uint16), EOS, 5, 3, Path("x.npy"))
    finally:
        arrays._SCAN_BLOCK = original
    got = [tokens[o : o + n] for o, n in zip(index["offset"], index["length"])]
    assert got == _docs_reference(tokens)
    assert (index["domain"] == 3).all()


def test_index_from_eos_rejects_ids_outside_the_vocab() -> None:
    with pytest.raises(DataError, match=r"x\.bin: token id 9 is outside the vocabulary of 5"):
        index_from_eos(np.array([1, 9, 0], np.uint16), EOS, 5, 0, Path("x.bin"))


def test_shard_round_trip(tmp_path: Path) -> None:
    tokens = np.array([5, 6, EOS, 7, EOS, EOS], np.uint16)
    path = tmp_path / "s.npy"
    write_shard(path, tokens, np.array([3, 2, 1]), domain=2)
    assert index_path(path).name == "s.index.npy"
    loaded = open_tokens(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint16
    index = read_index(path, loaded, EOS)
    assert index["offset"].tolist() == [0, 3, 5]
    assert index["domain"].tolist() == [2, 2, 2]


def test_index_that_does_not_match_its_array(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    write_shard(path, np.array([5, 6, EOS, 7, EOS], np.uint16), np.array([2, 3]), domain=0)
    with pytest.raises(DataError, match=r"s\.index\.npy: some documents do not end with EOS"):
        read_index(path, open_tokens(path), EOS)
    write_shard(path, np.array([5, EOS], np.uint16), np.array([2, 3]), domain=0)
    with pytest.raises(DataError, match=r"index covers 5 tokens but .*s\.npy holds 2"):
        read_index(path, open_tokens(path), EOS)
    index_path(path).unlink()
    with pytest.raises(DataError, match="document index not found"):
        read_index(path, open_tokens(path), EOS)


def test_truncated_npy_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.arange(1000, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(DataError, match=r"t\.npy: not a readable \.npy token array .*truncated"):
        open_tokens(path)


def test_bin_arrays(tmp_path: Path) -> None:
    path = tmp_path / "t.bin"
    np.arange(10, dtype="<u4").tofile(path)
    assert open_tokens(path, np.dtype(np.uint32)).tolist() == list(range(10))
    with pytest.raises(DataError, match="needs its dtype"):
        open_tokens(path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"t\.bin: 39 bytes is not a whole number of uint32 tokens"):
        open_tokens(path, np.dtype(np.uint32))
    path.write_bytes(b"")
    assert len(open_tokens(path, np.dtype(np.uint32))) == 0


def test_wrong_shapes_and_missing_files(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.zeros((2, 2), np.uint16))
    with pytest.raises(DataError, match=r"m\.npy: expected a 1-D integer token array"):
        open_tokens(tmp_path / "m.npy")
    with pytest.raises(DataError, match="token array not found"):
        open_tokens(tmp_path / "absent.npy")
