import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from emomoe.analyze.analysis import AnalysisConfig, run_analysis
from emomoe.analyze.collect import held_out_documents
from emomoe.checkpoint import load_for_inference
from emomoe.data.store import TokenStore
from emomoe.errors import ConfigError, DataError
from tests.fixtures import save_tiny_checkpoint

SETTINGS = {"num_docs": 4, "tokens_per_doc": 32, "clusters": {"num_clusters": 4, "num_inits": 2}}


@pytest.fixture(scope="module")
def analysis(analysis_checkpoints, analysis_store, sweep_dir):
    cfg = AnalysisConfig.from_dict(SETTINGS)
    return run_analysis(analysis_checkpoints, analysis_store, cfg, sweep_dir=sweep_dir, progress=False)


def test_numbers_match_a_document_by_document_reference(analysis, analysis_checkpoints, analysis_store):
    store = TokenStore.open(analysis_store)
    docs = held_out_documents(store, None, num_docs=4, tokens_per_doc=32)
    model, _ = load_for_inference(analysis_checkpoints["std"])
    for i, layer in enumerate(analysis["models"]["std"]["layers"]):
        doc_means, top1, domains = {}, [], []
        for tokens, y in zip(docs.tokens, docs.domain_G):
            with torch.inference_mode():
                logits_TE = model(torch.from_numpy(tokens)[None], return_routing=True).routing[i].router_logits_TE
            probs_TE = logits_TE.softmax(-1).numpy()
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
    for name, counts in analysis["documents"].items():
        assert counts["num_documents"] == 4 and 4 < counts["num_tokens"] <= 4 * 32
    for model in analysis["models"].values():
        clusters = model["clusters"]
        assert np.array(clusters["table"]).sum() == sum(c["num_tokens"] for c in analysis["documents"].values())
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
