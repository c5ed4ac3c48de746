import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.model.docs import Segments, doc_ids_from_eos

rows = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=12), min_size=1, max_size=4).map(
    lambda rs: [r + [1] * (max(map(len, rs)) - len(r)) for r in rs]
)


def _loop_doc_ids(row, eos):
    out, doc = [], 0
    for token in row:
        out.append(doc)
        doc += token == eos
    return out


@settings(max_examples=50, deadline=None)
@given(rows)
def test_doc_ids_count_eos_strictly_before(ids):
    got = doc_ids_from_eos(torch.tensor(ids), eos_id=0)
    assert got.tolist() == [_loop_doc_ids(r, 0) for r in ids]


def test_the_eos_that_ends_a_document_belongs_to_it():
    ids = torch.tensor([[5, 6, 0, 7, 0, 0, 8]])
    assert doc_ids_from_eos(ids, 0).tolist() == [[0, 0, 0, 1, 1, 2, 3]]


@settings(max_examples=50, deadline=None)
@given(rows)
def test_segments_are_runs_of_equal_doc_ids_numbered_in_row_major_order(ids):
    doc_ids = doc_ids_from_eos(torch.tensor(ids), eos_id=0)
    segments = Segments.from_doc_ids(doc_ids)
    expected, next_id = [], -1
    for row in doc_ids.tolist():
        for s, doc in enumerate(row):
            next_id += s == 0 or doc != row[s - 1]
            expected.append(next_id)
    assert segments.seg_T.tolist() == expected
    assert segments.num_segments == next_id + 1


def _official_cuts(row, eos):
    """The official router's segment of each position: cut at every EOS but one at position 0."""
    out, seg = [], 0
    for s, token in enumerate(row):
        seg += s > 0 and token == eos
        out.append(seg)
    return out


@settings(max_examples=50, deadline=None)
@given(rows)
def test_pool_segments_start_at_every_eos_but_the_first_position(ids):
    ids = torch.tensor(ids)
    segments = Segments.for_pool(doc_ids_from_eos(ids, eos_id=0), ids, eos_id=0)
    expected = Segments.from_doc_ids(torch.tensor([_official_cuts(r, 0) for r in ids.tolist()]))
    assert segments.seg_T.tolist() == expected.seg_T.tolist()
    assert segments.num_segments == expected.num_segments


def test_pool_segments_give_the_eos_to_the_next_document():
    ids = torch.tensor([[0, 5, 6, 0, 7, 0, 0, 8]])
    pool = Segments.for_pool(doc_ids_from_eos(ids, 0), ids, 0).seg_T.tolist()
    assert pool == [0, 0, 0, 1, 1, 2, 3, 3]


def test_pool_segments_also_start_where_given_doc_ids_start_without_an_eos():
    ids = torch.tensor([[5, 6, 7, 0, 8, 9]])
    pool = Segments.for_pool(torch.tensor([[0, 0, 1, 1, 1, 1]]), ids, 0).seg_T.tolist()
    assert pool == [0, 0, 1, 2, 2, 2]
    assert Segments.for_pool(torch.zeros_like(ids), ids, None).seg_T.tolist() == [0] * 6


def test_same_doc_mask_never_joins_rows_or_documents():
    doc_ids = torch.tensor([[0, 0, 1], [0, 0, 0]])
    same = Segments.from_doc_ids(doc_ids).same_doc_BSS(2)
    assert same[0].tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert same[1].all()
