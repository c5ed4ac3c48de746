"""report.md of the modularity analysis: the models side by side, in tables and figures."""

from __future__ import annotations

from typing import Any

import numpy as np

from emomoe.analyze.figures import KIND_LABEL, figure_files
from emomoe.analyze.modularity import headline
from emomoe.tables import markdown_table

HEADLINE_ROWS = {
    "last_layer_similarity_topk_freq": "domain similarity, last layer, top-k frequency, whole documents (lower: more modular)",
    "last_layer_similarity_mean_prob": "domain similarity, last layer, mean probability, whole documents",
    "last_layer_prefix_similarity_topk_freq": "domain similarity, last layer, top-k frequency, document prefixes",
    "cluster_domain_nmi": "NMI(token cluster; domain) (higher: clusters follow domains)",
    "last_layer_top1_domain_nmi": "NMI(top-1 expert; domain), last layer",
}
NUM_CLUSTERS_LISTED = 8
HTML_FILE = "clusters.html"
REPORT_FILE = "report.md"


def headline_table(analysis: dict[str, Any]) -> str:
    """The README's numbers, one column per model."""
    models = analysis["models"]
    numbers = {name: headline(m) for name, m in models.items()}
    rows = [[label, *[f"{numbers[n][key]:.3f}" for n in models]] for key, label in HEADLINE_ROWS.items()]
    return markdown_table(["metric", *models], rows)


def _settings(analysis: dict[str, Any]) -> str:
    s, whole, prefixes = analysis["settings"], analysis["documents"]["whole_documents"], analysis["documents"]["prefixes"]
    num_docs = sum(d["num_documents"] for d in whole.values())
    per_domain = ", ".join(f"{name} {d['num_documents']}" for name, d in whole.items())
    windows = ", ".join(f"{name} {m['window']}" for name, m in analysis["models"].items())
    return (
        f"- data: {s['store']}, held-out documents of at least {s['min_doc_tokens']} tokens: {num_docs} ({per_domain})\n"
        f"- whole documents (cut to {s['max_doc_tokens']} tokens, {sum(d['num_tokens'] for d in whole.values()):,} "
        "tokens in all): domain maps, domain similarity, coverage, NMI(top-1 expert; domain); a document longer than "
        f"a model's context goes through in windows of it ({windows} tokens)\n"
        f"- prefixes (the first {s['tokens_per_doc']} tokens of each, {sum(d['num_tokens'] for d in prefixes.values()):,} "
        "tokens in all): token clusters, prefix domain similarity\n"
        + "".join(f"- {name}: {path}\n" for name, path in s["checkpoints"].items())
        + f"- routing without a document pool (inference behaviour); clustering: k = {s['clusters']['num_clusters']}, "
        f"PCA to {s['clusters']['variance']:.0%} variance, seed {s['clusters']['seed']}"
    )


def _layer_table(analysis: dict[str, Any]) -> str:
    models = analysis["models"]
    header = ["layer"]
    for label in ("similarity top-k", "similarity prob", "prefix similarity top-k", "NMI(top-1; domain)"):
        header += [f"{name} {label}" for name in models]
    depth = max(len(m["layers"]) for m in models.values())
    rows = []
    for i in range(depth):
        layers = {name: m["layers"][i] if i < len(m["layers"]) else None for name, m in models.items()}
        first = next(layer for layer in layers.values() if layer is not None)
        cells = [str(first["layer"])]
        for get in (
            lambda layer: layer["mean_off_diagonal"]["topk_freq"],
            lambda layer: layer["mean_off_diagonal"]["mean_prob"],
            lambda layer: layer["prefix_mean_off_diagonal"]["topk_freq"],
            lambda layer: layer["top1_domain_nmi"],
        ):
            cells += [f"{get(layer):.3f}" if layer else "" for layer in layers.values()]
        rows.append(cells)
    return markdown_table(header, rows)


def _coverage_table(analysis: dict[str, Any]) -> str:
    models = analysis["models"]
    header = ["domain"]
    for label in ("entropy (bits)", "above uniform", "distinct"):
        header += [f"{name} {label}" for name in models]
    rows = []
    for y, domain in enumerate(analysis["domains"]):
        cells = [domain]
        for metric in ("entropy_bits", "experts_above_uniform", "distinct_experts"):
            cells += [f"{m['layers'][-1]['per_domain'][metric][y]:.2f}" for m in models.values()]
        rows.append(cells)
    return markdown_table(header, rows)


def _code(text: str) -> str:
    """`text` as inline code that survives a markdown table: pipes escaped, backticks fenced."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _cluster_table(analysis: dict[str, Any], name: str) -> str:
    clusters = analysis["models"][name]["clusters"]
    table_CY = np.array(clusters["table"])
    total = table_CY.sum()
    rows = []
    for c in np.argsort(-table_CY.sum(axis=1), kind="stable")[:NUM_CLUSTERS_LISTED]:
        size = table_CY[c].sum()
        y = int(table_CY[c].argmax())
        tokens = " ".join(_code(t) for t, _ in clusters["clusters"][c]["top_tokens"][:8])
        rows.append([
            f"c{c}", f"{size / total:.1%}", f"{analysis['domains'][y]} ({table_CY[c, y] / size:.0%})", tokens
        ])
    return markdown_table(["cluster", "tokens", "main domain (its share)", "most frequent tokens"], rows)


def _cluster_facts(analysis: dict[str, Any]) -> str:
    models = analysis["models"]
    facts = {
        "purity": lambda c: f"{c['purity']:.3f}",
        "NMI(cluster; domain)": lambda c: f"{c['nmi']:.3f}",
        "mean share of a document in its most common cluster": lambda c: f"{c['mean_top_cluster_share_per_doc']:.2f}",
        "first tokens in their most common cluster": lambda c: f"{c['first_token']['share_of_first_tokens']:.0%}",
        "first tokens' share of that cluster": lambda c: f"{c['first_token']['first_token_share_of_cluster']:.0%}",
        "PCA components (variance kept)": lambda c: f"{c['num_components']} ({c['variance_kept']:.1%})",
        "spherical k-means passes after mini-batch k-means": lambda c: (
            f"{c['refine_passes']} ({'settled' if c['refine_settled'] else 'stopped at the limit'})"
        ),
    }
    rows = [[label, *[get(m["clusters"]) for m in models.values()]] for label, get in facts.items()]
    return markdown_table(["", *models], rows)


def _overlap_section(analysis: dict[str, Any], figures: dict[str, str]) -> str:
    overlap = analysis["subset_overlap"]
    rows = []
    for name, per_keep in overlap.items():
        for keep, cell in per_keep.items():
            means = ", ".join(f"{v:.2f}" for v in cell["mean_off_diagonal"])
            baseline = ", ".join(f"{v:.2f}" for v in cell["random_baseline"]) if cell["random_baseline"] else "n/a"
            rows.append([name, keep, str(len(cell["domains"])), means, baseline])
    return (
        "## Overlap of the experts kept for different domains\n\n"
        "Mean Jaccard overlap between the kept-expert sets of every pair of domains, per MoE layer, next to "
        "what two random subsets of the same size would share.\n\n"
        + markdown_table(["model", "keep", "domains", "mean overlap per layer", "random subsets"], rows)
        + f"\n\n![subset overlap]({figures['subset_overlap']})"
    )


def analysis_report(analysis: dict[str, Any], *, command: str | None = None) -> str:
    """The markdown of report.md, which sits beside the figures and clusters.html."""
    models, figures = analysis["models"], figure_files(analysis)
    sections = ["# Emergent modularity: which experts serve which domains"]
    if command:
        sections.append(f"Reproduce with:\n\n```\n{command}\n```")
    sections += [
        _settings(analysis),
        "## Headline\n\n" + headline_table(analysis) + "\n\nThe paper (1T-token models, 24 WebOrganizer "
        "topics) found most domain pairs above 0.6 for the standard MoE and below 0.4 for EMO in later "
        "layers, and EMO's token clusters following topics where the standard model's follow syntax.",
        "## Domain similarity per layer\n\nCosine similarity between the domains' mean routing vectors of whole "
        "documents (the paper's Fig. 6), averaged over pairs of different domains; the same on the document prefixes "
        "the clustering reads; and the normalised mutual information between a token's top-1 expert and its "
        "domain.\n\n" + _layer_table(analysis)
        + f"\n\n![similarity and NMI by layer]({figures['layers']})\n\n"
        + "\n\n".join(f"![domain similarity, {KIND_LABEL[k]}]({figures[f'similarity:{k}']})" for k in KIND_LABEL),
        "## Which experts each domain uses\n\nMean routed probability and top-k frequency of every expert per "
        "domain; experts are grouped by the domain they serve most, so a modular model shows blocks.\n\n"
        + "\n\n".join(f"![{name} domain x expert maps]({figures[f'maps:{name}']})" for name in models),
        "## Routing entropy and expert coverage (last layer)\n\nPer document, averaged over a domain's documents: "
        "entropy of the mean routed distribution, experts above uniform weight, experts picked at least once.\n\n"
        + _coverage_table(analysis) + f"\n\n![coverage by layer]({figures['coverage']})",
        "## Token clusters of router activations\n\nEvery prefix token's routed softmax of all MoE layers, "
        "concatenated, clustered with spherical k-means. The paper found a dedicated cluster for the first token of every "
        f"document in EMO. Example documents coloured by cluster: [{HTML_FILE}]({HTML_FILE}).\n\n"
        + _cluster_facts(analysis) + f"\n\n![clusters vs domains]({figures['clusters']})\n\n"
        + "\n\n".join(f"Largest clusters of {name}:\n\n{_cluster_table(analysis, name)}" for name in models),
    ]
    if analysis.get("subset_overlap"):
        sections.append(_overlap_section(analysis, figures))
    return "\n\n".join(sections) + "\n"


def summary_section(analysis: dict[str, Any], folder: str) -> str:
    """A short section for another report (the demo's): the headline numbers and three figures,
    linking to the full analysis written in `folder` beside it."""
    figures = figure_files(analysis)
    return (
        "## Emergent modularity: which experts serve which domains\n\n"
        + headline_table(analysis)
        + f"\n\n![similarity and NMI by layer]({folder}/{figures['layers']})"
        + f"\n\n![domain similarity, top-k frequency]({folder}/{figures['similarity:topk_freq']})"
        + f"\n\n![token clusters vs domains]({folder}/{figures['clusters']})"
        + f"\n\nThe full analysis (domain x expert maps, coverage, clusters with their tokens, subset overlap): "
        f"[{folder}/{REPORT_FILE}]({folder}/{REPORT_FILE}); example documents coloured by cluster: "
        f"[{folder}/{HTML_FILE}]({folder}/{HTML_FILE}).\n"
    )
