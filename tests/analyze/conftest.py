import json

import numpy as np
import pytest

from emomoe.analyze.collect import Documents, RoutedLayer
from tests.fixtures import THREE_DOMAINS, build_store, save_tiny_checkpoint, three_domain_store, word_documents


@pytest.fixture(scope="session")
def analysis_store(tmp_path_factory):
    """Three synthetic domains with 5-6 held-out documents each, 300-token byte-level BPE."""
    return three_domain_store(tmp_path_factory.mktemp("an-store") / "store")


def single_domain_store(path):
    """A store whose documents all carry one label: nothing to compare domains with."""
    return build_store(word_documents({"all": THREE_DOMAINS["code"]}, 12, num_words=(10, 20)), path, vocab_size=280)


@pytest.fixture(scope="session")
def analysis_checkpoints(tmp_path_factory, analysis_store):
    """name -> checkpoint: a tiny EMO-configured model, and a standard one whose layers have 4 and 6
    routed experts (a subset-shaped model)."""
    root = tmp_path_factory.mktemp("an-ckpt")
    std = ["moe.router.pool=off", "moe.num_experts_per_layer=[5,7]"]
    return {
        "emo": save_tiny_checkpoint(root / "emo", analysis_store),
        "std": save_tiny_checkpoint(root / "std", analysis_store, *std, seed=1),
    }


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory):
    """A sweep directory whose results.json kept 3 of the 7 routed experts of "emo" per domain."""
    path = tmp_path_factory.mktemp("sweep")
    kept = {"code": [[0, 1, 2], [3, 4, 5]], "legal": [[0, 1, 6], [3, 4, 5]], "math": [[4, 5, 6], [0, 1, 2]]}
    results = {"loss": {"layerwise": {}}, "kept_experts": {"layerwise": {"emo": {"0.5": kept}}}}
    (path / "results.json").write_text(json.dumps(results))
    return path


def routed_layer(layer: int, probs_TE: np.ndarray, experts_TK: np.ndarray, docs: Documents) -> RoutedLayer:
    """A layer's routing of `docs` as the collection pass keeps it, when every document is its own
    prefix: the per-document numbers summed token by token."""
    _, doc_T, _, _ = docs.token_arrays()
    num_docs, num_experts = len(docs.tokens), probs_TE.shape[1]
    probs_GE, picks_GE, top1_GE = (np.zeros((num_docs, num_experts)) for _ in range(3))
    for t, g in enumerate(doc_T):
        probs_GE[g] += probs_TE[t]
        picks_GE[g, experts_TK[t]] += 1
        top1_GE[g, probs_TE[t].argmax()] += 1
    lengths_G1 = np.array([len(tokens) for tokens in docs.tokens])[:, None]
    return RoutedLayer(layer, probs_GE / lengths_G1, picks_GE / lengths_G1, top1_GE, probs_TE, experts_TK)


def separable_routing():
    """Two domains whose tokens route to opposite experts: clusters should be the domains."""
    docs = Documents(
        ["a", "b"], [np.array([1, 1, 2]), np.array([1, 3]), np.array([7, 7, 7]), np.array([8])], np.array([0, 0, 1, 1])
    )
    rng = np.random.default_rng(0)
    _, _, _, domain_T = docs.token_arrays()
    pattern = np.array([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])
    layers = []
    for i in range(2):
        probs_TE = pattern[domain_T] + rng.uniform(0, 0.01, (len(domain_T), 3))
        probs_TE = probs_TE / probs_TE.sum(1, keepdims=True)
        layers.append(routed_layer(i, probs_TE, probs_TE.argmax(1)[:, None], docs))
    return layers, docs
