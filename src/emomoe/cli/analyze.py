"""`emomoe analyze`: which experts serve which domains, for several models side by side."""

from __future__ import annotations

import argparse

from emomoe.analyze.analysis import AnalysisConfig, run_analysis, write_analysis
from emomoe.analyze.modularity_report import headline_table
from emomoe.cli._models import model_names
from emomoe.cli._options import add_config_options, config_from_args
from emomoe.io import check_output_dir, refuse_existing
from emomoe.train.runtime import setup_runtime

EXAMPLES = """examples:
  emomoe analyze --checkpoints runs/demo/emo/final runs/demo/std/final --names emo std \\
      --data runs/demo/store --out runs/analysis
  emomoe analyze --checkpoints subsets/emo-code --data runs/store --domains code math legal \\
      --clusters.num-clusters 16 --out a
  emomoe analyze --checkpoints runs/demo/emo/final runs/demo/std/final --names emo std \\
      --data runs/demo/store --sweep runs/demo --out runs/analysis      # + Jaccard of the sweep's subsets
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="show which experts serve which domains (domain maps, similarity, MI, token clusters)",
        description="Run held-out documents of every domain through each model (no document pool) in one "
        "pass and measure modularity per MoE layer: domain x expert maps, cosine similarity between domains' "
        "routing vectors, routing entropy and expert coverage, MI/NMI of a token's top-1 expert with its "
        "domain; and spherical k-means clusters of the concatenated router softmax (purity, NMI, top tokens, "
        "example documents, the first-token cluster). Writes OUT/analysis.json, PNG figures, clusters.html "
        "and report.md with the models side by side.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="DIR",
                   help="model checkpoints: trained here, subsets, or imported")
    p.add_argument("--names", nargs="+", metavar="NAME", help="model names in the report (default: directory names)")
    p.add_argument("--data", required=True, metavar="STORE", help="token store with domain labels")
    p.add_argument("--sweep", metavar="DIR",
                   help="a sweep directory (results.json or subsets' selection.json): Jaccard overlap of kept experts")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true")
    add_config_options(p, AnalysisConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(AnalysisConfig, args)
    check_output_dir(args.out)
    refuse_existing(args.out, args.force)
    checkpoints = model_names(args.checkpoints, args.names)
    setup_runtime()
    analysis = run_analysis(checkpoints, args.data, cfg, sweep_dir=args.sweep, progress=not args.no_progress)
    report = write_analysis(args.out, analysis)
    print(headline_table(analysis))
    print(f"\nwrote {report}, analysis.json, figures and clusters.html in {args.out}")
    return 0
