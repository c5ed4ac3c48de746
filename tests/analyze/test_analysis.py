import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from emomoe.analyze.analysis import AnalysisConfig, run_analysis
from emomoe.analyze.collect import held_out_documents
from emomoe.checkpoint import load_for_inference
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError, DataError
from tests.fixtures import THREE_DOMAINS, build_store, save_tiny_checkpoint, word_documents

SETTINGS = {"num_docs": 4, "tokens_per_doc": 32, "clusters": {"num_clusters": 4, "num_inits": 2}}


@pytest.fixture(scope="module")
def analysis(analysis_checkpoints, analysis_store, sweep_dir):
    cfg = AnalysisConfig.from_dict(SETTINGS)
    return run_analysis(analysis_checkpoints, analysis_store, cfg, sweep_dir=sweep_dir, progress=False)


def _probs_alone(model, tokens, window, layer):
    """Routed softmax of every token of a document, each `window`-token piece run alone."""
    probs = []
    with torch.inference_mode():
        for start in range(0, len(tokens), window):
            routing = model(torch.from_numpy(tokens[start : start + window])[None], return_routing=True).routing[layer]
            probs.append(routing.router_logits_TE.softmax(-1).numpy())
    return np.concatenate(probs)


def test_numbers_match_a_document_by_document_reference(analysis, analysis_checkpoints, analysis_store):
    store = TokenStore.open(analysis_store)
    docs = held_out_documents(store, None, num_docs=4, tokens_per_doc=2048, min_tokens=32)
    assert max(map(len, docs.tokens)) > 128  # some documents need two windows of the tiny model's context
    model, cfg = load_for_inference(analysis_checkpoints["std"])
    assert analysis["models"]["std"]["window"] == cfg.max_seq_len == 128
    for i, layer in enumerate(analysis["models"]["std"]["layers"]):
        doc_means, top1, domains = {}, [], []
        for tokens, y in zip(docs.tokens, docs.domain_G):
            probs_TE = _probs_alone(model, tokens, cfg.max_seq_len, i)
            doc_means.setdefault(int(y), []).append(probs_TE.mean(0))
            top1 += probs_TE.argmax(1).tolist()
            domains += [int(y)] * len(tokens)
        expected = np.stack([np.mean(doc_means[y], axis=0) for y in range(3)])
        assert np.array(layer["maps"]["mean_prob"]) == pytest.approx(expected, abs=1e-5)
        assert layer["top1_domain_nmi"] == pytest.approx(normalized_mutual_info_score(domains, top1), abs=1e-9)
    assert [layer["num_experts"] for layer in analysis["models"]["std"]["layers"]] == [4, 6]


def test_the_record_says_what_was_analysed(analysis, analysis_store):
    assert analysis["domains"] == ["code", "legal", "math"]
    assert analysis["settings"]["num_docs"] == 4 and analysis["settings"]["clusters"]["num_clusters"] == 4
    assert set(analysis["computed_on"]) == {"whole_documents", "prefixes"}
    whole, prefixes = analysis["documents"]["whole_documents"], analysis["documents"]["prefixes"]
    for name, counts in prefixes.items():
        assert counts["num_documents"] == whole[name]["num_documents"] == 4
        assert counts["num_tokens"] == 4 * 32 < whole[name]["num_tokens"]
    for model in analysis["models"].values():
        clusters = model["clusters"]
        assert np.array(clusters["table"]).sum() == sum(c["num_tokens"] for c in prefixes.values())
        layer = model["layers"][-1]
        assert set(analysis["computed_on"]["whole_documents"]) | set(analysis["computed_on"]["prefixes"]) <= {
            *layer, "clusters"
        }
        assert len(clusters["clusters"]) == 4 and set(clusters["examples"]) == {"code", "legal", "math"}
    overlap = analysis["subset_overlap"]["emo"]["0.5"]
    assert overlap["mean_off_diagonal"] == pytest.approx([(0.5 + 0 + 0.2) / 3, (1 + 0 + 0) / 3])
    assert overlap["random_baseline"] is not None


def test_bad_inputs_are_refused_before_any_model_runs(analysis_checkpoints, analysis_store, tmp_path):
    cfg = AnalysisConfig.from_dict(SETTINGS)
    small_vocab = save_tiny_checkpoint(tmp_path / "v256", analysis_store, "vocab_size=256")
    with pytest.raises(DataError, match=r"vocabulary \(3\d\d\) is larger than the model's \(256\)"):
        run_analysis({"a": analysis_checkpoints["emo"], "b": small_vocab}, analysis_store, cfg, progress=False)
    too_many = AnalysisConfig.from_dict({**SETTINGS, "clusters": {"num_clusters": 5000}})
    with pytest.raises(ConfigError, match="k = 5000 is more than the"):
        run_analysis(analysis_checkpoints, analysis_store, too_many, progress=False)
    too_long = AnalysisConfig.from_dict({**SETTINGS, "tokens_per_doc": 129})
    with pytest.raises(ConfigError, match="tokens_per_doc: 129 exceeds"):
        run_analysis(analysis_checkpoints, analysis_store, too_long, progress=False)
    with pytest.raises(ConfigError, match="tokens_per_doc: the prefix \\(64\\) is longer than max_doc_tokens 48"):
        AnalysisConfig.from_dict({**SETTINGS, "tokens_per_doc": 64, "max_doc_tokens": 48})
    with pytest.raises(ConfigError, match="min_doc_tokens: 50 is more than max_doc_tokens 48"):
        AnalysisConfig.from_dict({**SETTINGS, "min_doc_tokens": 50, "max_doc_tokens": 48})


def test_domain_similarity_reads_whole_documents(tmp_path):
    """Two domains whose documents open with the same 60 words and differ after them: alike on their
    prefixes (the clustering's input), told apart on whole documents (the paper's Fig. 6)."""
    opening = " ".join(THREE_DOMAINS["code"] * 3)
    tails = word_documents({"legal": THREE_DOMAINS["legal"], "math": THREE_DOMAINS["math"]}, 12, num_words=(40, 60))
    store_dir = build_store([{**d, "text": f"{opening} {d['text']}"} for d in tails], tmp_path / "s", vocab_size=300,
                            val_fraction=0.3)
    checkpoint = save_tiny_checkpoint(tmp_path / "m", store_dir, "max_seq_len=64")
    cfg = AnalysisConfig.from_dict({"tokens_per_doc": 32, "clusters": {"num_clusters": 2, "num_inits": 1}})
    analysis = run_analysis({"m": checkpoint}, store_dir, cfg, progress=False)
    store = TokenStore.open(store_dir)
    texts = [(store.domains.index(domain), t[:-1].astype(np.int64)) for domain, t in store.documents("val")]
    assert len({t[:32].tobytes() for _, t in texts}) == 1 and all(len(t) > 3 * 64 for _, t in texts)
    model, _ = load_for_inference(checkpoint)
    for i, layer in enumerate(analysis["models"]["m"]["layers"]):
        means = [np.mean([_probs_alone(model, t, 64, i).mean(0) for z, t in texts if z == y], axis=0) for y in (0, 1)]
        cosine = means[0] @ means[1] / np.linalg.norm(means[0]) / np.linalg.norm(means[1])
        assert layer["similarity"]["mean_prob"][0][1] == pytest.approx(cosine, abs=1e-6)
        assert layer["mean_off_diagonal"]["topk_freq"] < 0.99
        assert layer["prefix_mean_off_diagonal"]["topk_freq"] == pytest.approx(1.0, abs=1e-9)
        assert layer["prefix_mean_off_diagonal"]["mean_prob"] == pytest.approx(1.0, abs=1e-6)
