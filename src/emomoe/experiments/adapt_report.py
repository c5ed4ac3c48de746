"""The report of the adaptation study (`emomoe demo --adapt`): held-out-domain loss against the number
of documents k, for EMO's and the standard MoE's subsets and full models, what each cell cost, and the
seen domains' loss after it (forgetting). Reads the results that `experiments.adapt` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emomoe.io import atomic_write_text
from emomoe.tables import markdown_table

COLUMNS = (("emo", "subset"), ("std", "subset"), ("emo", "full"), ("std", "full"))
TITLES = {"emo": "EMO", "std": "std"}


def _cell(results: dict[str, Any], model: str, variant: str, k: int) -> dict[str, Any] | None:
    return results["cells"].get(f"{model}/{variant}/k{k}")


def _ks(results: dict[str, Any]) -> list[int]:
    return [0, *sorted(results["settings"]["num_docs"])]


def loss_table(results: dict[str, Any], which: str = "held_out") -> str:
    """Rows k (0: no fine-tuning), a column per (model, variant): the loss after fine-tuning on k
    documents (`which`: "held_out", the held-out domain's, or "seen", the mean over the seen ones), and
    EMO minus std for the subsets and the full models. A subset needs documents to be selected on, so k = 0
    has full models only."""
    rows = []
    for k in _ks(results):
        values = []
        for model, variant in COLUMNS:
            cell = _cell(results, model, variant, k)
            values.append(None if cell is None else cell["after"][which])
        shown = ["" if v is None else f"{v:.3f}" for v in values]
        gaps = [values[0] - values[1] if None not in values[:2] else None,
                values[2] - values[3] if None not in values[2:] else None]
        rows.append([str(k), *shown, *("" if g is None else f"{g:+.3f}" for g in gaps)])
    header = [f"{TITLES[m]} {v}" for m, v in COLUMNS]
    return markdown_table(["k", *header, "EMO - std (subset)", "EMO - std (full)"], rows)


def before_table(results: dict[str, Any]) -> str:
    """The subsets' held-out-domain loss right after selection on k documents, before fine-tuning."""
    rows = []
    for k in _ks(results)[1:]:
        cells = [_cell(results, model, "subset", k) for model in TITLES]
        rows.append([str(k), *("" if c is None else f"{c['before']['held_out']:.3f}" for c in cells)])
    return markdown_table(["k", *(f"{t} subset, not fine-tuned" for t in TITLES.values())], rows)


def cost_table(results: dict[str, Any]) -> str:
    """What every fine-tuned cell cost: selection and fine-tuning seconds, tokens, parameters updated."""
    rows = []
    for k in _ks(results)[1:]:
        for model, variant in COLUMNS:
            cell = _cell(results, model, variant, k)
            if cell is None:
                continue
            tune, select = cell["finetune"], cell.get("selection")
            rows.append([
                str(k), f"{TITLES[model]} {variant}", f"{select['seconds']:.1f}" if select else "",
                f"{select['tokens']:,}" if select else "", f"{tune['seconds']:.1f}", str(tune["steps"]),
                f"{tune['tokens']:,}", f"{tune['epochs']:g}", f"{cell['params']:,}",
            ])
    header = ["k", "model", "select s", "select tokens", "fine-tune s", "steps", "fine-tune tokens", "epochs",
              "params updated"]
    return markdown_table(header, rows)


def adapt_report(results: dict[str, Any], command: str) -> str:
    settings = results["settings"]
    held_out, seen = settings["held_out"], settings["seen"]
    documents = "; ".join(f"k = {k}: {d['num_tokens']:,} tokens" for k, d in results["documents"].items())
    training = "; ".join(f"{m}: {f['steps']} steps, {f['tokens']:,} tokens, {f['wall s (this run)']} s"
                         for m, f in results.get("training", {}).items())
    recipe = settings["recipe"]
    return "\n".join([
        f"# Adaptation to a held-out domain: {held_out}",
        "",
        (f"Both demo models were pretrained on {', '.join(seen)} only ({training}). For each k, k training "
        f"documents of {held_out} ({documents}) select each model's {settings['keep']:g} subset (layerwise) and "
        f"fine-tune it, and the full models, with the paper's recipe (AdamW, lr {recipe['lr']:g}, warmup over "
        f"{recipe['warmup_fraction']:.0%} then linear decay, global batch 32 windows of {settings['seq_len']} tokens) "
        f"for {settings['num_steps']} steps in every cell. Losses are nats per token on the validation documents "
        f"(which the k never come from). Seed {settings['seed']}, one run."),
        "",
        f"Reproduce: `{command}`",
        "",
        f"## {held_out} loss after fine-tuning on k documents",
        "",
        loss_table(results),
        "",
        "## The subsets before fine-tuning (selected on the k documents)",
        "",
        before_table(results),
        "",
        "## Mean loss over the seen domains after fine-tuning (forgetting)",
        "",
        loss_table(results, "seen"),
        "",
        "## Cost of each cell",
        "",
        cost_table(results),
        "",
    ])


def write_adapt_report(path: Path, results: dict[str, Any], command: str) -> None:
    atomic_write_text(path, adapt_report(results, command))
