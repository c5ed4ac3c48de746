"""The adaptation study's tables, on hand-made results."""

from emomoe.experiments.adapt_report import adapt_report, before_table, cost_table, loss_table


def _losses(held_out: float, seen: float) -> dict:
    return {"held_out": held_out, "seen": seen, "domains": {"german": held_out, "code": seen}}


def _results() -> dict:
    tuned = {"seconds": 1.5, "steps": 2, "tokens": 2048, "epochs": 4.0}
    return {
        "settings": {"held_out": "german", "seen": ["code"], "num_docs": [8], "keep": 0.25, "num_steps": 2,
                     "seq_len": 32, "seed": 0, "recipe": {"lr": 5e-5, "warmup_fraction": 0.1}},
        "documents": {"8": {"numbers": list(range(8)), "num_tokens": 512}},
        "training": {"emo": {"steps": 2, "tokens": 1024, "wall s (this run)": 3.0}},
        "cells": {
            "emo/full/k0": {"after": _losses(6.0, 2.0), "params": 1000},
            "std/full/k0": {"after": _losses(6.5, 2.1), "params": 1000},
            "emo/subset/k8": {"after": _losses(4.0, 5.0), "before": _losses(7.0, 5.5), "params": 400,
                              "finetune": tuned, "selection": {"seconds": 0.25, "tokens": 511}},
            "std/subset/k8": {"after": _losses(4.5, 5.5), "before": _losses(8.0, 6.0), "params": 400,
                              "finetune": tuned, "selection": {"seconds": 0.5, "tokens": 511}},
            "emo/full/k8": {"after": _losses(3.0, 2.25), "params": 1000, "finetune": tuned},
            "std/full/k8": {"after": _losses(3.25, 2.0), "params": 1000, "finetune": tuned},
        },
    }


def test_loss_against_k_with_the_differences_and_no_subset_at_k0():
    lines = loss_table(_results()).splitlines()
    assert lines[0] == "| k | EMO subset | std subset | EMO full | std full | EMO - std (subset) | EMO - std (full) |"
    assert lines[2] == "| 0 |  |  | 6.000 | 6.500 |  | -0.500 |"
    assert lines[3] == "| 8 | 4.000 | 4.500 | 3.000 | 3.250 | -0.500 | -0.250 |"
    assert loss_table(_results(), "seen").splitlines()[3] == "| 8 | 5.000 | 5.500 | 2.250 | 2.000 | -0.500 | +0.250 |"


def test_the_subsets_before_fine_tuning_and_the_cost_of_every_cell():
    assert before_table(_results()).splitlines()[2] == "| 8 | 7.000 | 8.000 |"
    rows = cost_table(_results()).splitlines()
    assert len(rows) == 2 + 4
    assert rows[2] == "| 8 | EMO subset | 0.2 | 511 | 1.5 | 2 | 2,048 | 4 | 400 |"
    assert rows[4] == "| 8 | EMO full |  |  | 1.5 | 2 | 2,048 | 4 | 1,000 |"


def test_a_report_of_unfinished_results_leaves_the_missing_cells_blank():
    results = _results()
    del results["cells"]["std/full/k8"]
    report = adapt_report(results, "emomoe demo --adapt --out runs/adapt")
    assert "| 8 | 4.000 | 4.500 | 3.000 |  | -0.500 |  |" in report
    assert "Reproduce: `emomoe demo --adapt --out runs/adapt`" in report and "k = 8: 512 tokens" in report
