"""The analysis figures, drawn from the analysis JSON alone (see `emomoe.analyze.analysis`).

Each function writes one PNG and returns its path. Domain names label the matrices; every heatmap
has a colour bar; models sit side by side with shared colour scales where values are comparable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from emomoe.analyze.metrics import expert_order

KIND_LABEL = {"topk_freq": "top-k frequency", "mean_prob": "mean routed probability"}
KIND_UNIT = {"topk_freq": "top-k selections per token", "mean_prob": "mean routed probability"}
COVERAGE = {
    "entropy_bits": ("routing entropy per document (bits)", "{:.2f}"),
    "experts_above_uniform": ("experts above uniform weight per document", "{:.1f}"),
    "distinct_experts": ("distinct experts per document", "{:.1f}"),
}
MAX_PANELS = 4
"""Layers shown per model in the matrix figures, evenly spaced from first to last (as in the paper)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(num_rows: int, num_cols: int, width: float, height: float):
    """A figure of num_rows x num_cols panels (always a 2-d array of axes), laid out with its colour bars."""
    return _pyplot().subplots(num_rows, num_cols, figsize=(width, height), squeeze=False, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def shown_layers(num_layers: int) -> list[int]:
    """Positions (among a model's MoE layers) of the panels to draw: all of them, or MAX_PANELS evenly spaced."""
    if num_layers <= MAX_PANELS:
        return list(range(num_layers))
    return sorted({int(round(x)) for x in np.linspace(0, num_layers - 1, MAX_PANELS)})


def _annotate(ax, image, m: np.ndarray, fmt: str = "{:.2f}") -> None:
    """Write every value into its cell (small matrices only), light on the dark end of the colour map."""
    if m.shape[0] * m.shape[1] > 150:
        return
    for (i, j), v in np.ndenumerate(m):
        dark = image.norm(v) < 0.5
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if dark else "black")


def _domain_axes(ax, domains: list[str], *, x: bool = True, y: bool = True) -> None:
    if x:
        ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
    if y:
        ax.set_yticks(range(len(domains)), domains)


def plot_domain_maps(analysis: dict[str, Any], model: str, path: Path) -> Path:
    """Domain x expert heatmaps of one model (top-k frequency and mean probability), experts
    grouped by the domain they serve most so that blocks show."""
    domains, layers = analysis["domains"], analysis["models"][model]["layers"]
    rows = shown_layers(len(layers))
    fig, axes = _grid(len(rows), 2, 13, (0.32 * len(domains) + 1.3) * len(rows))
    for r, i in enumerate(rows):
        layer = layers[i]
        for c, kind in enumerate(("topk_freq", "mean_prob")):
            ax = axes[r][c]
            m_YE = np.array(layer["maps"][kind])
            order = expert_order(m_YE)
            im = ax.imshow(m_YE[:, order], aspect="auto", cmap="viridis", interpolation="nearest")
            _domain_axes(ax, domains, x=False)
            if len(order) <= 40:
                ax.set_xticks(range(len(order)), [str(e) for e in order], fontsize=6, rotation=90)
            else:
                ax.set_xticks([])
            ax.set_xlabel("expert id (grouped by the domain it serves most)")
            ax.set_title(f"{model}, layer {layer['layer']}: {KIND_LABEL[kind]}")
            fig.colorbar(im, ax=ax, label=KIND_UNIT[kind], fraction=0.04, pad=0.02)
    fig.suptitle(f"{model}: which experts each domain uses (held-out documents)")
    return _save(fig, path)


def plot_similarity(analysis: dict[str, Any], kind: str, path: Path) -> Path:
    """Cosine similarity between domains' routing vectors: one row of layers per model, one scale."""
    domains, models = analysis["domains"], analysis["models"]
    num_cols = max(len(shown_layers(len(m["layers"]))) for m in models.values())
    size = max(3.2, 0.42 * len(domains) + 1.2)  # room for two title lines
    fig, axes = _grid(len(models), num_cols, size * num_cols + 1.2, (size + 0.9) * len(models))
    im = None
    for r, (name, model) in enumerate(models.items()):
        cols = shown_layers(len(model["layers"]))
        for c in range(num_cols):
            ax = axes[r][c]
            if c >= len(cols):
                ax.axis("off")
                continue
            layer = model["layers"][cols[c]]
            sim = np.array(layer["similarity"][kind])
            im = ax.imshow(sim, vmin=0.0, vmax=1.0, cmap="magma", interpolation="nearest")
            _annotate(ax, im, sim)
            _domain_axes(ax, domains, x=r == len(models) - 1, y=c == 0)
            if r != len(models) - 1:
                ax.set_xticks([])
            if c != 0:
                ax.set_yticks([])
            mean = layer["mean_off_diagonal"][kind]
            ax.set_title(f"{name}, layer {layer['layer']}\nmean off-diagonal {mean:.2f}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="cosine similarity", fraction=0.03, pad=0.02)
    fig.suptitle(f"Domain similarity of routing ({KIND_LABEL[kind]} vectors of whole documents)")
    return _save(fig, path)


def plot_layer_lines(analysis: dict[str, Any], path: Path) -> Path:
    """Per MoE layer: mean off-diagonal domain similarity (both vectors of whole documents, top-k
    frequency of the prefixes) and NMI(top-1 expert; domain)."""
    fig, axes = _grid(1, 2, 12, 4.3)
    left, right = axes[0]
    for i, (name, model) in enumerate(analysis["models"].items()):
        xs = [layer["layer"] for layer in model["layers"]]
        for kind, style in (("topk_freq", "-"), ("mean_prob", "--")):
            ys = [layer["mean_off_diagonal"][kind] for layer in model["layers"]]
            left.plot(xs, ys, style, color=f"C{i}", marker="o", label=f"{name}, {KIND_LABEL[kind]}")
        ys = [layer["prefix_mean_off_diagonal"]["topk_freq"] for layer in model["layers"]]
        left.plot(xs, ys, ":", color=f"C{i}", marker=".", label=f"{name}, {KIND_LABEL['topk_freq']}, prefixes")
        right.plot(xs, [layer["top1_domain_nmi"] for layer in model["layers"]], color=f"C{i}", marker="o", label=name)
    paper = ((0.6, "paper: standard MoE pairs mostly above 0.6"), (0.4, "paper: EMO pairs mostly below 0.4"))
    for level, text in paper:
        left.axhline(level, color="gray", linestyle=":", linewidth=1)
        left.text(0.01, level + 0.01, text, fontsize=7, color="gray", transform=left.get_yaxis_transform())
    left.set_ylim(0, 1.05)
    left.set_xlabel("layer")
    left.set_ylabel("mean off-diagonal cosine similarity")
    left.set_title("How alike domains look to the router (lower: more modular)")
    right.set_ylim(0, None)
    right.set_xlabel("layer")
    right.set_ylabel("NMI(top-1 expert; domain)")
    right.set_title("Domain information in a token's top-1 expert")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def plot_coverage(analysis: dict[str, Any], path: Path) -> Path:
    """Domain x layer heatmaps of routing entropy and expert coverage, one column per model."""
    domains, models = analysis["domains"], analysis["models"]
    fig, axes = _grid(len(COVERAGE), len(models), 4.8 * len(models) + 1.5, (0.3 * len(domains) + 1.4) * len(COVERAGE))
    for r, (metric, (label, fmt)) in enumerate(COVERAGE.items()):
        grids = {
            name: np.array([layer["per_domain"][metric] for layer in m["layers"]]).T for name, m in models.items()
        }
        lo = min(g.min() for g in grids.values())
        hi = max(g.max() for g in grids.values())
        for c, (name, grid_YL) in enumerate(grids.items()):
            ax = axes[r][c]
            im = ax.imshow(grid_YL, vmin=lo, vmax=hi, aspect="auto", cmap="viridis", interpolation="nearest")
            _annotate(ax, im, grid_YL, fmt)
            _domain_axes(ax, domains, x=False, y=c == 0)
            if c != 0:
                ax.set_yticks([])
            ax.set_xticks(range(grid_YL.shape[1]), [str(layer["layer"]) for layer in models[name]["layers"]])
            ax.set_xlabel("layer")
            ax.set_title(f"{name}: {label}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    return _save(fig, path)


def plot_clusters(analysis: dict[str, Any], path: Path) -> Path:
    """Cluster x domain tables: the share of each cluster's tokens per domain, biggest clusters first."""
    domains, models = analysis["domains"], analysis["models"]
    k = max(m["clusters"]["num_clusters"] for m in models.values())
    fig, axes = _grid(1, len(models), (0.45 * len(domains) + 3) * len(models), 0.26 * k + 2)
    im = None
    for c, (name, model) in enumerate(models.items()):
        clusters = model["clusters"]
        table_CY = np.array(clusters["table"], dtype=np.float64)
        sizes_C = table_CY.sum(axis=1)
        order = [i for i in np.argsort(-sizes_C, kind="stable") if sizes_C[i] > 0]
        share_CY = table_CY[order] / sizes_C[order, None]
        ax = axes[0][c]
        im = ax.imshow(share_CY, vmin=0, vmax=1, aspect="auto", cmap="Blues", interpolation="nearest")
        ax.set_yticks(range(len(order)), [f"c{i} ({sizes_C[i] / sizes_C.sum():.1%})" for i in order], fontsize=7)
        _domain_axes(ax, domains, y=False)
        if c == 0:
            ax.set_ylabel("cluster (share of all tokens)")
        ax.set_xlabel("domain")
        ax.set_title(f"{name}: purity {clusters['purity']:.2f}, NMI(cluster; domain) {clusters['nmi']:.2f}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="share of the cluster's tokens", fraction=0.03, pad=0.02)
    fig.suptitle("Token clusters of router activations vs domains")
    return _save(fig, path)


def plot_subset_overlap(analysis: dict[str, Any], path: Path) -> Path:
    """Jaccard overlap of the kept-expert sets between domains' subsets, at the last MoE layer."""
    overlap = analysis["subset_overlap"]
    keeps = sorted({k for per_keep in overlap.values() for k in per_keep}, key=_keep_order)
    names = list(overlap)
    domains = max((o["domains"] for per_keep in overlap.values() for o in per_keep.values()), key=len)
    size = max(3.6, 0.42 * len(domains) + 1.5)
    fig, axes = _grid(len(keeps), len(names), size * len(names) + 1.2, size * len(keeps))
    im = None
    for r, keep in enumerate(keeps):
        for c, name in enumerate(names):
            ax = axes[r][c]
            cell = overlap[name].get(keep)
            if cell is None:
                ax.axis("off")
                continue
            m = np.array(cell["jaccard"][-1])
            im = ax.imshow(m, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
            _annotate(ax, im, m)
            _domain_axes(ax, cell["domains"])
            baseline = cell["random_baseline"]
            extra = f", random {baseline[-1]:.2f}" if baseline else ""
            ax.set_title(
                f"{name}, keep {keep} ({cell['num_kept'][-1]} kept), last layer\n"
                f"mean off-diagonal {cell['mean_off_diagonal'][-1]:.2f}{extra}", fontsize=9,
            )
    fig.colorbar(im, ax=axes.ravel().tolist(), label="Jaccard overlap of kept experts", fraction=0.03, pad=0.02)
    fig.suptitle("Overlap of the experts kept for different domains")
    return _save(fig, path)


def _keep_order(label: str) -> tuple[int, float, str]:
    try:
        return (0, -float(label), label)
    except ValueError:
        return (1, 0.0, label)


def file_stem(name: str) -> str:
    """A model name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def figure_files(analysis: dict[str, Any]) -> dict[str, str]:
    """Figure key -> PNG file name, for every figure `analysis` has data for."""
    files = {f"maps:{name}": f"domain_expert_{file_stem(name)}.png" for name in analysis["models"]}
    files |= {f"similarity:{kind}": f"similarity_{kind}.png" for kind in KIND_LABEL}
    files |= {"layers": "by_layer.png", "coverage": "coverage.png", "clusters": "clusters.png"}
    if analysis.get("subset_overlap"):
        files["subset_overlap"] = "subset_overlap.png"
    return files


def draw_figures(directory: Path, analysis: dict[str, Any]) -> None:
    """Every figure of `figure_files(analysis)` into `directory`."""
    whole = {"layers": plot_layer_lines, "coverage": plot_coverage, "clusters": plot_clusters,
             "subset_overlap": plot_subset_overlap}
    for key, file in figure_files(analysis).items():
        kind, _, arg = key.partition(":")
        if kind == "maps":
            plot_domain_maps(analysis, arg, directory / file)
        elif kind == "similarity":
            plot_similarity(analysis, arg, directory / file)
        else:
            whole[kind](analysis, directory / file)
