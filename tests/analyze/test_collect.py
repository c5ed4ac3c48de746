import numpy as np
import pytest
import torch

from emomoe.analyze.collect import Documents, collect_routing, held_out_documents
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


@pytest.mark.parametrize("name", ["emo", "std"])
def test_batched_collection_equals_each_document_run_alone(analysis_store, analysis_checkpoints, name):
    store = TokenStore.open(analysis_store)
    full = held_out_documents(store, None, num_docs=2, tokens_per_doc=40)
    lengths = [40, 7, 23, 1, 40, 12]  # ragged rows: padding must not change the real tokens' routing
    docs = Documents(full.domains, [t[:n] for t, n in zip(full.tokens, lengths)], full.domain_G)
    model, cfg = load_for_inference(analysis_checkpoints[name])
    routed = collect_routing(model, docs, batch_size=4, pad_id=store.eos_id)
    assert [r.num_experts for r in routed] == [cfg.moe.routed_in_layer(i) for i in range(cfg.num_layers)]
    with torch.inference_mode():
        alone = [model(torch.from_numpy(t)[None], return_routing=True).routing for t in docs.tokens]
    for i, layer in enumerate(routed):
        assert layer.layer == i
        ref_probs = np.concatenate([r[i].router_logits_TE.softmax(-1).numpy() for r in alone])
        ref_experts = np.concatenate([r[i].experts_TK.numpy() for r in alone])
        np.testing.assert_allclose(layer.probs_TE, ref_probs, atol=1e-5)
        assert (layer.experts_TK == ref_experts).all()
        assert layer.top_k == cfg.moe.top_k


def test_dense_layers_are_left_out(analysis_store, tmp_path):
    store = TokenStore.open(analysis_store)
    path = save_tiny_checkpoint(tmp_path / "m", analysis_store, "moe.num_experts_per_layer=[1,8]")
    model, _ = load_for_inference(path)
    docs = held_out_documents(store, None, num_docs=1, tokens_per_doc=6)
    routed = collect_routing(model, docs, batch_size=2, pad_id=store.eos_id)
    assert [r.layer for r in routed] == [1]
    assert routed[0].probs_TE.shape == (docs.num_tokens, 7)
