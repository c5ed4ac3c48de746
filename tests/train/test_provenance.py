import json
import shutil

import pytest

from emomoe.data.store import TokenStore
from emomoe.errors import DataError
from emomoe.model import ModelConfig
from emomoe.train.config import RunConfig
from emomoe.train.provenance import checkpoint_tokenizer, find_tokenizer, load_with_tokenizer, run_store
from tests.fixtures import build_store, save_tiny_checkpoint, word_documents


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    docs = word_documents({"a": ["alpha", "beta", "gamma"], "b": ["eins", "zwei", "drei"]}, 8, num_words=(10, 30))
    return build_store(docs, tmp_path_factory.mktemp("store") / "store", vocab_size=280)


def _run(tmp_path, store):
    """A run directory as training leaves it: config.yaml naming the store, the model in final/."""
    run = tmp_path / "run"
    run.mkdir()
    RunConfig.from_dict({"data": {"store": str(store)}}).to_yaml(run / "config.yaml")
    return save_tiny_checkpoint(run / "final", store)


def test_a_trained_checkpoint_finds_the_tokenizer_of_its_runs_store(tmp_path, store):
    final = _run(tmp_path, store)
    assert run_store(final) == store
    assert find_tokenizer(final) == TokenStore.open(store).tokenizer_path
    model, cfg, tok = load_with_tokenizer(final)
    assert tok.hash == TokenStore.open(store).tokenizer_hash and not model.training


def test_a_subset_finds_its_sources_tokenizer_and_a_tokenizer_beside_the_checkpoint_wins(tmp_path, store):
    final = _run(tmp_path, store)
    subset = save_tiny_checkpoint(tmp_path / "subsets" / "a", store)
    record = {"source_checkpoint": str(final), "source_sha256": "0" * 64, "moe_layers": [0, 1],
              "kept_experts": [[0], [1]]}
    (subset / "selection.json").write_text(json.dumps(record))
    assert find_tokenizer(subset) == TokenStore.open(store).tokenizer_path
    shutil.copytree(TokenStore.open(store).tokenizer_path, subset / "tokenizer")
    assert find_tokenizer(subset) == subset / "tokenizer"


def test_no_tokenizer_anywhere_is_one_clear_error(tmp_path, store):
    lonely = save_tiny_checkpoint(tmp_path / "lonely", store)
    assert find_tokenizer(lonely) is None
    with pytest.raises(DataError, match=r"lonely: no tokenizer found .* pass --tokenizer"):
        load_with_tokenizer(lonely)


def test_a_tokenizer_the_model_cannot_read_is_refused(tmp_path, store):
    tok_dir = TokenStore.open(store).tokenizer_path
    small = ModelConfig.preset("tiny").with_overrides(["vocab_size=200", "eos_id=0"])
    with pytest.raises(DataError, match=r"vocabulary \(280\) is larger than the model's \(200\)"):
        checkpoint_tokenizer("ckpt", small, tok_dir)
    other_eos = ModelConfig.preset("tiny").with_overrides(["vocab_size=300", "eos_id=5"])
    with pytest.raises(DataError, match="is id 0, but the model's eos_id is 5"):
        checkpoint_tokenizer("ckpt", other_eos, tok_dir)
