import numpy as np
import pytest
import torch

from emomoe.analyze.collect import Documents, collect_routing, held_out_documents, windows
from emomoe.checkpoint import load_for_inference
from emomoe.data.store import TokenStore
from emomoe.errors import DataError
from tests.analyze.conftest import single_domain_store
from tests.fixtures import save_tiny_checkpoint


@pytest.mark.parametrize("cut", [10, 1000])
def test_held_out_documents_are_cut_without_eos(analysis_store, cut):
    store = TokenStore.open(analysis_store)
    docs = held_out_documents(store, None, num_docs=1000, tokens_per_doc=cut)
    assert docs.domains == store.domains
    expected = [(d, t) for d, t in store.documents("val")]
    assert len(docs.tokens) == len(expected)
    for got, y, (domain, tokens) in zip(docs.tokens, docs.domain_G, expected):
        assert tokens[-1] == store.eos_id and store.eos_id not in got
        assert got.tolist() == tokens[:-1][:cut].tolist() and docs.domains[y] == domain


def test_held_out_documents_are_evenly_spaced(analysis_store):
    store = TokenStore.open(analysis_store)
    docs = held_out_documents(store, ["math", "code"], num_docs=2, tokens_per_doc=5)
    assert docs.domains == ["math", "code"] and docs.domain_G.tolist() == [0, 0, 1, 1]
    for y, name in enumerate(docs.domains):
        all_docs = [t[:5].tolist() for _, t in store.documents("val", [name])]
        picked = [t.tolist() for t, g in zip(docs.tokens, docs.domain_G) if g == y]
        assert picked == [all_docs[0], all_docs[-1]]


def test_a_store_without_domain_labels_is_refused(analysis_store, tmp_path):
    single = single_domain_store(tmp_path / "s")
    with pytest.raises(DataError, match="only 1"):
        held_out_documents(TokenStore.open(single), None, num_docs=4, tokens_per_doc=8)
    with pytest.raises(DataError, match="only 1"):
        held_out_documents(TokenStore.open(analysis_store), ["code"], num_docs=4, tokens_per_doc=8)


def test_token_arrays_follow_the_documents():
    docs = Documents(["a", "b"], [np.array([5, 6, 7]), np.array([8])], np.array([1, 0]))
    token_T, doc_T, pos_T, domain_T = docs.token_arrays()
    assert token_T.tolist() == [5, 6, 7, 8]
    assert doc_T.tolist() == [0, 0, 0, 1]
    assert pos_T.tolist() == [0, 1, 2, 0]
    assert domain_T.tolist() == [1, 1, 1, 0]
    assert docs.num_tokens == 4


def _routing_alone(model, tokens, window, layer):
    """Softmax and chosen experts of one document's tokens, every window run alone."""
    probs, experts = [], []
    with torch.inference_mode():
        for start in range(0, len(tokens), window):
            routing = model(torch.from_numpy(tokens[start : start + window])[None], return_routing=True).routing[layer]
            probs.append(routing.router_logits_TE.softmax(-1).numpy())
            experts.append(routing.experts_TK.numpy())
    return np.concatenate(probs), np.concatenate(experts)


@pytest.mark.parametrize("name", ["emo", "std"])
def test_batched_collection_equals_each_window_run_alone(analysis_store, analysis_checkpoints, name):
    store = TokenStore.open(analysis_store)
    full = held_out_documents(store, None, num_docs=2, tokens_per_doc=40)
    lengths = [40, 7, 23, 1, 40, 12]  # ragged rows: padding must not change the real tokens' routing
    docs = Documents(full.domains, [t[:n] for t, n in zip(full.tokens, lengths)], full.domain_G)
    model, cfg = load_for_inference(analysis_checkpoints[name])
    window, prefix = 16, 10  # documents of up to 3 windows; the prefix lies in the first
    routed = collect_routing(model, docs, prefix_tokens=prefix, window=window, batch_size=4, pad_id=store.eos_id)
    assert [r.num_experts for r in routed] == [cfg.moe.routed_in_layer(i) for i in range(cfg.num_layers)]
    for i, layer in enumerate(routed):
        assert layer.layer == i and layer.top_k == cfg.moe.top_k
        prefix_probs, prefix_experts = [], []
        for g, tokens in enumerate(docs.tokens):
            probs_TE, experts_TK = _routing_alone(model, tokens, window, i)
            assert len(probs_TE) == len(tokens)
            picks_E = np.bincount(experts_TK.reshape(-1), minlength=layer.num_experts) / len(tokens)
            top1_E = np.bincount(probs_TE.argmax(1), minlength=layer.num_experts)
            np.testing.assert_allclose(layer.doc_probs_GE[g], probs_TE.mean(0), atol=1e-5)
            np.testing.assert_allclose(layer.doc_topk_freq_GE[g], picks_E)
            np.testing.assert_array_equal(layer.doc_top1_GE[g], top1_E)
            prefix_probs.append(probs_TE[:prefix])
            prefix_experts.append(experts_TK[:prefix])
        np.testing.assert_allclose(layer.prefix_probs_TE, np.concatenate(prefix_probs), atol=1e-5)
        assert (layer.prefix_experts_TK == np.concatenate(prefix_experts)).all()


def test_windows_cover_every_document_in_order():
    docs = Documents(["a"], [np.arange(5), np.arange(2), np.arange(4)], np.array([0, 0, 0]))
    assert windows(docs, 2) == [(0, 0), (0, 2), (0, 4), (1, 0), (2, 0), (2, 2)]


def test_short_documents_are_left_out(analysis_store):
    store = TokenStore.open(analysis_store)
    every = [t[:-1] for _, t in store.documents("val")]
    cut = sorted(len(t) for t in every)[len(every) // 2]
    docs = held_out_documents(store, None, num_docs=1000, tokens_per_doc=1000, min_tokens=cut)
    assert sorted(map(len, docs.tokens)) == sorted(len(t) for t in every if len(t) >= cut)
    with pytest.raises(DataError, match="no held-out .* of at least 100000 tokens"):
        held_out_documents(store, None, num_docs=4, tokens_per_doc=8, min_tokens=100_000)


def test_dense_layers_are_left_out(analysis_store, tmp_path):
    store = TokenStore.open(analysis_store)
    path = save_tiny_checkpoint(tmp_path / "m", analysis_store, "moe.num_experts_per_layer=[1,8]")
    model, _ = load_for_inference(path)
    docs = held_out_documents(store, None, num_docs=1, tokens_per_doc=6)
    routed = collect_routing(model, docs, prefix_tokens=6, window=6, batch_size=2, pad_id=store.eos_id)
    assert [r.layer for r in routed] == [1]
    assert routed[0].prefix_probs_TE.shape == (docs.num_tokens, 7)
