"""One example document per domain as HTML, every token coloured by its router-activation cluster.

The models' renderings of the same document sit one below the other, so one sees at a glance
whether a model's clusters follow the topic (one colour per document) or the syntax (many).
"""

from __future__ import annotations

import colorsys
import html
from typing import Any

_GOLDEN = 0.618033988749895


def cluster_colour(cluster: int) -> str:
    """A light colour per cluster id; neighbouring ids get far-apart hues."""
    hue = (cluster * _GOLDEN) % 1.0
    value = 0.97 if cluster % 2 == 0 else 0.85
    r, g, b = colorsys.hsv_to_rgb(hue, 0.45, value)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _span(piece: str, cluster: int) -> str:
    return f'<span style="background:{cluster_colour(cluster)}" title="cluster {cluster}">{html.escape(piece)}</span>'


def _legend(model: str, clusters: dict[str, Any], used: set[int]) -> str:
    items = []
    for c in sorted(used):
        tokens = " ".join(html.escape(t) for t, _ in clusters["clusters"][c]["top_tokens"][:6])
        items.append(f"<li>{_span(f'cluster {c}', c)} {tokens}</li>")
    summary = f"<summary>{html.escape(model)}: clusters in these documents</summary>"
    return f"<details>{summary}<ul>{''.join(items)}</ul></details>"


def clusters_html(analysis: dict[str, Any]) -> str:
    """A standalone HTML page (no scripts, no external files)."""
    models = analysis["models"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Token clusters by document</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".doc{font-family:monospace;white-space:pre-wrap;line-height:1.6;border:1px solid #ccc;padding:.5em}"
        "</style></head><body><h1>Token clusters of router activations, one held-out document per domain</h1>",
        f"<p>The first {analysis['settings']['tokens_per_doc']} tokens of each document: the clustering's input.</p>",
        "<p>Each token is coloured by its cluster (hover for the id); cluster ids are per model. "
        "k-means on each model's concatenated per-layer routed softmax.</p>",
    ]
    for domain in analysis["domains"]:
        parts.append(f"<h2>{html.escape(domain)}</h2>")
        for name, model in models.items():
            example = model["clusters"]["examples"][domain]
            labels = example["clusters"]
            share = max(labels.count(c) for c in set(labels)) / len(labels)
            spans = "".join(_span(p, c) for p, c in zip(example["pieces"], labels))
            parts.append(
                f"<h3>{html.escape(name)}: {len(set(labels))} clusters, "
                f"{share:.0%} of tokens in the most common one</h3><div class='doc'>{spans}</div>"
            )
            parts.append(_legend(name, model["clusters"], set(labels)))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
