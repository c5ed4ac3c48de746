"""The sweep plot: loss increase versus fraction of experts kept, one panel per selection method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emomoe.analyze.sweep_results import domains_of, for_method, increase, keeps_descending, mean_increase, methods_of
from emomoe.errors import optional_import
from emomoe.io import atomic_path


def plot_loss_increase(results: dict[str, Any], path: str | Path) -> Path:
    """One colour per model: a thick line for the mean over domains, thin lines for each domain;
    one panel per selection method, on a shared loss axis."""
    matplotlib = optional_import("matplotlib", "plot", "the loss plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = methods_of(results)
    fig, axes = plt.subplots(1, len(methods), figsize=(7 * len(methods), 4.5), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        _panel(ax, for_method(results, method), method if len(methods) > 1 else None)
    axes[0][0].set_ylabel("held-out loss increase (nats/token)")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def _panel(ax: Any, view: dict[str, Any], method: str | None) -> None:
    keeps = keeps_descending(view)
    xs = [float(k) for k in keeps]
    for i, model in enumerate(view["loss"]):
        color = f"C{i}"
        for domain in domains_of(view):
            ys = [increase(view, model, k, domain) for k in keeps]
            ax.plot(xs, ys, color=color, alpha=0.3, linewidth=0.9)
        ax.plot(
            xs, [mean_increase(view, model, k) for k in keeps],
            color=color, linewidth=2.5, marker="o", label=f"{model} (mean over domains)",
        )
    ax.plot([], [], color="gray", alpha=0.3, linewidth=0.9, label="single domains")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.invert_xaxis()
    ax.set_xlabel("fraction of routed experts kept per layer")
    ax.set_title(f"selection method: {method}" if method else "Selective expert use: loss increase vs experts kept")
    ax.grid(alpha=0.3)
    ax.legend()
