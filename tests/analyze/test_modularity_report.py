from emomoe.analyze.clusters import ClusterConfig
from emomoe.analyze.modularity import model_summary
from emomoe.analyze.modularity_report import analysis_report, headline_table, summary_section
from tests.analyze.conftest import separable_routing


class PipeDecoder:
    """Token 1 decodes to text that would break a markdown table."""

    def decode(self, ids):
        return "".join({1: "a|b", 7: "`x`"}.get(i, f"t{i}") for i in ids)


def _analysis():
    layers, docs = separable_routing()
    summary = model_summary(layers, docs, docs, ClusterConfig(num_clusters=2), PipeDecoder(), num_top_tokens=3)
    counts = {"a": {"num_documents": 2, "num_tokens": 5}, "b": {"num_documents": 2, "num_tokens": 4}}
    return {
        "settings": {"store": "S", "tokens_per_doc": 3, "min_doc_tokens": 1, "max_doc_tokens": 8,
                     "checkpoints": {"x": "X", "y": "Y"}, "clusters": {"num_clusters": 2, "variance": 0.95, "seed": 42}},
        "domains": docs.domains,
        "documents": {"whole_documents": counts, "prefixes": counts},
        "models": {"x": {"window": 8, **summary}, "y": {"window": 8, **summary}},
    }


def test_headline_table_has_one_column_per_model():
    analysis = _analysis()
    lines = headline_table(analysis).splitlines()
    assert lines[0] == "| metric | x | y |" and len(lines) == 2 + 5
    nmi = analysis["models"]["x"]["clusters"]["nmi"]
    assert lines[5] == f"| NMI(token cluster; domain) (higher: clusters follow domains) | {nmi:.3f} | {nmi:.3f} |"


def test_report_keeps_tables_intact_and_links_every_figure():
    text = analysis_report(_analysis(), command="emomoe analyze X")
    assert "`a\\|b`" in text and "`` `x` ``" in text
    assert "held-out documents of at least 1 tokens: 4 (a 2, b 2)" in text
    passes = _analysis()["models"]["x"]["clusters"]["refine_passes"]
    assert f"| spherical k-means passes after mini-batch k-means | {passes} (settled) | {passes} (settled) |" in text
    assert "whole documents (cut to 8 tokens, 9 tokens in all)" in text and "the first 3 tokens of each" in text
    for png in ("by_layer.png", "coverage.png", "clusters.png", "domain_expert_x.png", "similarity_topk_freq.png"):
        assert f"]({png})" in text
    assert "subset_overlap.png" not in text
    section = summary_section(_analysis(), "analysis")
    assert "](analysis/by_layer.png)" in section and "](analysis/report.md)" in section
