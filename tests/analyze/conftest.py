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
        layers.append(RoutedLayer(i, probs_TE / probs_TE.sum(1, keepdims=True), probs_TE.argmax(1)[:, None]))
    return layers, docs
