"""`emomoe analyze`: which experts serve which domains, for several models side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from emomoe.analyze.analysis import AnalysisConfig, run_analysis, write_analysis
from emomoe.analyze.clusters import ClusterConfig
from emomoe.analyze.modularity_report import headline_table
from emomoe.cli.eval import sweep_names
from emomoe.errors import DataError
from emomoe.train.runtime import setup_runtime

EXAMPLES = """examples:
  emomoe analyze --checkpoints runs/demo/emo/final runs/demo/std/final --names emo std \\
      --data runs/demo/store --out runs/analysis
  emomoe analyze --checkpoints subsets/emo-code --data runs/store --domains code math legal --k 16 --out a
  emomoe analyze --checkpoints runs/demo/emo/final runs/demo/std/final --names emo std \\
      --data runs/demo/store --sweep runs/demo --out runs/analysis      # + Jaccard of the sweep's subsets
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults, cluster_defaults = AnalysisConfig(), ClusterConfig()
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
    p.add_argument("--domains", nargs="+", metavar="NAME", help="default: every domain of the store")
    p.add_argument("--num-docs", type=int, default=defaults.num_docs, metavar="N",
                   help=f"held-out documents per domain, evenly spaced (default {defaults.num_docs})")
    p.add_argument("--tokens-per-doc", type=int, default=defaults.tokens_per_doc, metavar="N",
                   help=f"first tokens of each document analysed (default {defaults.tokens_per_doc}, as in the paper)")
    p.add_argument("--k", type=int, default=cluster_defaults.num_clusters,
                   help=f"token clusters (default {cluster_defaults.num_clusters})")
    p.add_argument("--seed", type=int, default=cluster_defaults.seed,
                   help=f"seed of PCA and k-means (default {cluster_defaults.seed})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="documents per forward pass")
    p.add_argument("--sweep", metavar="DIR",
                   help="a sweep directory (results.json or subsets' selection.json): Jaccard overlap of kept experts")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if Path(args.out).exists() and not args.force:
        raise DataError(f"{args.out}: already exists (pass --force to replace it)")
    checkpoints = sweep_names(args.checkpoints, args.names)
    cfg = AnalysisConfig.from_dict({
        "domains": args.domains, "num_docs": args.num_docs, "tokens_per_doc": args.tokens_per_doc,
        "batch_size": args.batch_size, "clusters": {"num_clusters": args.k, "seed": args.seed},
    })
    setup_runtime()
    analysis = run_analysis(checkpoints, args.data, cfg, sweep_dir=args.sweep, progress=not args.no_progress)
    report = write_analysis(args.out, analysis)
    print(headline_table(analysis))
    print(f"\nwrote {report}, analysis.json, figures and clusters.html in {args.out}")
    return 0
