"""report.md of a protocol run: per task, the whole models, the subsets by calibration size, and
each reference next to the subsets closest to it in bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emomoe.io import atomic_write_text
from emomoe.tables import markdown_table

REPORT_FILE = "report.md"
FULL = "full"
"""The method of a whole model's cells."""
NO_CALIBRATION = "no calibration"


def calib_label(num_calib: int | None) -> str:
    """How a calibration size is written: n5, all (0), random (none)."""
    return "random" if num_calib is None else f"n{num_calib}" if num_calib else "all"


def headline(scores: dict[str, float]) -> str:
    """The metric a table shows: accuracy if the task has it, else its first metric."""
    return "acc" if "acc" in scores else next(k for k in scores if k != "n")


def _score(cell: dict[str, Any], metric: str) -> str:
    """The cell's score, and after fine-tuning if it was."""
    text = f"{cell['before'][metric]:.3f}"
    return f"{text} → {cell['after'][metric]:.3f}" if "after" in cell else text


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f}"


def _calibration_order(num_calib: int | None) -> tuple[int, int]:
    """n1, n5, ..., all; no calibration last."""
    return (1, 0) if num_calib is None else (0, num_calib or 10**12)


def _whole_models(results: dict[str, Any], cells: list[dict[str, Any]], metric: str) -> str:
    rows = []
    for cell in cells:
        model = results["models"][cell["model"]]
        rows.append([cell["model"], model["role"], f"{model['params']['total']:,}", _mb(model["bytes"]),
                     _score(cell, metric)])
    return markdown_table(["model", "role", "parameters", "MB", metric], rows)


def _subsets(cells: list[dict[str, Any]], metric: str) -> str:
    sizes = sorted({c["num_calib"] for c in cells}, key=_calibration_order)
    rows: dict[tuple, list[str]] = {}
    for cell in cells:
        key = (cell["model"], cell["method"], cell["keep"])
        row = rows.setdefault(key, [*key, ",".join(map(str, sorted(set(cell["routed_kept"])))),
                                    f"{cell['params']['total']:,}", _mb(cell["bytes"]), *[""] * len(sizes)])
        row[6 + sizes.index(cell["num_calib"])] = _score(cell, metric)
    header = ["model", "method", "keep", "routed experts per layer", "parameters", "MB"]
    header += [NO_CALIBRATION if n is None else f"{n or 'all'} examples" for n in sizes]
    return markdown_table(header, list(rows.values()))


def _memory_matched(results: dict[str, Any], whole: list[dict[str, Any]], subsets: list[dict[str, Any]],
                    metric: str) -> str:
    """Each reference, and per (model, method) the subset closest to it in bytes (its largest calibration)."""
    rows = []
    for ref in (c for c in whole if results["models"][c["model"]]["role"] == "reference"):
        size = results["models"][ref["model"]]["bytes"]
        by_model_method: dict[tuple[str, str], dict[str, Any]] = {}
        for cell in sorted(subsets, key=lambda c: _calibration_order(c["num_calib"])):
            key = (cell["model"], cell["method"])
            best = by_model_method.get(key)
            if best is None or abs(cell["bytes"] - size) <= abs(best["bytes"] - size):
                by_model_method[key] = cell
        for (model, method), cell in by_model_method.items():
            rows.append([ref["model"], _mb(size), _score(ref, metric), model, method, cell["keep"],
                         calib_label(cell["num_calib"]), _mb(cell["bytes"]), _score(cell, metric)])
    header = ["reference", "MB", metric, "model", "method", "keep", "calibration", "MB", metric]
    return markdown_table(header, rows)


def _task_section(results: dict[str, Any], task: str) -> str:
    cells = [c for c in results["cells"] if c["task"] == task]
    whole = [c for c in cells if c["method"] == FULL]
    subsets = [c for c in cells if c["method"] != FULL]
    if not whole:
        return f"## {task}\n\nNo finished cells yet."
    metric = headline(whole[0]["before"])
    info = results["tasks"][task]
    splits = "; ".join(
        f"{name}: held out {s['held_out']}, calibration from {'+'.join(s['calibration'])}, "
        f"fine-tuning from {'+'.join(s['finetune'])}, {s['num_fewshot']}-shot"
        + (f", calibration {info['calibration_sources'][name]['num_fewshot']}-shot" if "calibration_sources" in info else "")
        for name, s in info["sources"].items()
    )
    items = f" on {int(whole[0]['before']['n'])} held-out items" if "n" in whole[0]["before"] else ""
    lines = [
        f"## {task}",
        f"{metric} (lm-eval){items}; {info['num_calibration']} "
        f"calibration and {info['num_finetune']} fine-tuning examples ({info['splits']} splits: {splits}). "
        "A cell shows the score before → after fine-tuning where the model was fine-tuned.",
        "### Whole models\n\n" + _whole_models(results, whole, metric),
    ]
    if subsets:
        lines.append("### Subsets, by calibration examples\n\n" + _subsets(subsets, metric))
    if subsets and any(results["models"][c["model"]]["role"] == "reference" for c in whole):
        lines.append("### Memory-matched references\n\nEach reference next to the subset of every model and method "
                     "closest to it in bytes.\n\n" + _memory_matched(results, whole, subsets, metric))
    return "\n\n".join(lines)


def write_report(out_dir: str | Path, results: dict[str, Any]) -> Path:
    """Write `out_dir/report.md` from a protocol's results; returns its path."""
    settings = "\n".join(f"- {k}: {v}" for k, v in results["settings"].items())
    sections = ["# emomoe protocol: selective expert use on tasks", f"Settings:\n\n{settings}"]
    sections += [_task_section(results, task) for task in results["tasks"]]
    path = Path(out_dir) / REPORT_FILE
    atomic_write_text(path, "\n\n".join(sections) + "\n")
    return path
