"""Experiments: runs that compose the library into a study and write its report.

- `demo`: the whole pipeline on the embedded corpus (`emomoe demo`);
- `sweep`, `sweep_report`, `sweep_tables`, `sweep_plot`: loss against the fraction of experts
  kept, for every model, domain and selection method (`emomoe sweep`);
- `auto_selection`: how often `--selection auto` picks a held-out document's own domain (in the sweep);
- `finetune`: a subset fine-tuned on its domain (`emomoe finetune`);
- `harness`, `benchmarks`: benchmark tasks through lm-evaluation-harness (`emomoe lm-eval`).
"""
