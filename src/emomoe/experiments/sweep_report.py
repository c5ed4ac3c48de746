"""report.md: what a sweep found, with its tables, plot and the sizes of the subsets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emomoe.errors import MissingDependency, warn
from emomoe.experiments.auto_selection import auto_selection_table
from emomoe.experiments.sweep_plot import plot_loss_increase
from emomoe.experiments.sweep_tables import (
    advantage_line,
    equal_bytes_line,
    equal_bytes_table,
    params_table,
    subset_loss_table,
    summary_table,
)
from emomoe.io import atomic_write_text
from emomoe.tables import markdown_table

PLOT_FILE = "loss_vs_keep.png"
REPORT_FILE = "report.md"


def write_report(
    out_dir: str | Path,
    results: dict[str, Any],
    *,
    title: str = "emomoe report: selective expert use",
    training: dict[str, dict[str, Any]] | None = None,
    command: str | None = None,
) -> Path:
    """Write `out_dir/report.md` and the plot beside it.

    `results` is a sweep result (see `emomoe.analyze.sweep_results`); `training` optionally maps
    each model name to a few facts about its training run (steps, tokens, wall time, final loss);
    `command` is the command line that reproduces the report.
    """
    out_dir = Path(out_dir)
    try:
        plot_loss_increase(results, out_dir / PLOT_FILE)
        figure = [f"![loss increase vs fraction of experts kept]({PLOT_FILE})"]
    except MissingDependency as e:
        warn(f"{e}; the report has no plot")
        figure = []
    sections = [f"# {title}"]
    if command:
        sections.append(f"Reproduce with:\n\n```\n{command}\n```")
    settings = results.get("settings")
    if settings:
        sections.append("Sweep settings:\n\n" + "\n".join(f"- {k}: {_plain(v)}" for k, v in settings.items()))
    advantage = advantage_line(results)
    sections += [
        "## Mean held-out loss increase over the full model\n\n"
        "Averaged over domains, in nats per token; each domain uses its own subset, chosen on its "
        "training documents by each selection method and evaluated on its held-out documents.\n\n"
        + summary_table(results) + (f"\n\n{advantage}" if advantage else ""),
        *figure,
        "## Per-domain held-out loss (increase over the full model)\n\n" + subset_loss_table(results),
        "## Parameters of the subsets\n\n" + params_table(results),
    ]
    if results.get("equal_bytes"):
        sections.append(_equal_bytes_section(results))
    if results.get("auto_selection"):
        sections.append(_auto_selection_section(results))
    if training:
        sections.append("## Training runs\n\n" + _training_table(training))
    path = out_dir / REPORT_FILE
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path


def _equal_bytes_section(results: dict[str, Any]) -> str:
    return (
        "## Equal bytes: the same count in every layer, or per-layer counts from one ranking\n\n"
        "Mean held-out loss increase over the full model of two subsets of the same bytes, per domain "
        "chosen on its training documents: one keeps the fraction `keep` of every layer's routed experts, "
        "the other keeps every layer's top-k and then the experts of all layers in the order of their "
        "share of their layer's score, until the bytes are spent (`emomoe select --budget-gb`).\n\n"
        + equal_bytes_table(results) + "\n\n" + equal_bytes_line(results)
    )


def _auto_selection_section(results: dict[str, Any]) -> str:
    domains = results["settings"]["domains"]
    return (
        "## Choosing the subset from the prompt (`--selection auto`)\n\n"
        "How often the router mass of a held-out document's first tokens matches its own domain's "
        "calibration profile best, among the profiles of all domains (chance: "
        f"{1 / len(domains):.3f}); a document shorter than the prompt is matched on all of it. The "
        "selection files of every subset, with these profiles, are in `selections/`.\n\n"
        + auto_selection_table(results["auto_selection"])
    )


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} = {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _training_table(training: dict[str, dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for facts in training.values() for k in facts))
    rows = [[model, *[_fmt(facts.get(k, "")) for k in keys]] for model, facts in training.items()]
    return markdown_table(["model", *keys], rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
