"""`emomoe eval` and `emomoe sweep`: held-out loss per domain, for one model or across expert subsets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emomoe.analyze.sweep_results import RESULTS_FILE, keeps_descending, mean_increase
from emomoe.cli.select import ANY_TOKENIZER_HELP
from emomoe.errors import ConfigError
from emomoe.evaluate.loss import evaluate_checkpoint
from emomoe.experiments.sweep import SweepConfig, run_sweep, write_sweep
from emomoe.io import atomic_write_text, check_output_dir, refuse_existing
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import SelectMethod
from emomoe.train.rundir import FINAL_DIR
from emomoe.train.runtime import setup_runtime

EVAL_EXAMPLES = """examples:
  emomoe eval --checkpoint runs/demo/emo/final --data runs/demo/store --domains code legal --out eval.json
"""
SWEEP_EXAMPLES = """examples:
  emomoe sweep --checkpoints runs/emo/final runs/std/final --names emo std --data runs/store --out runs/sweep
  emomoe sweep --checkpoints runs/emo/final --data runs/store --keep 1,0.25 --method easy-ep --domains code math --out s
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "eval",
        help="held-out loss and perplexity of a checkpoint, per domain",
        description="Token-weighted next-token loss (nats/token) and perplexity on the validation documents "
        "of a token store, per domain and over all of them. Routing uses no document pool.",
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("--checkpoint", required=True, metavar="DIR")
    e.add_argument("--data", required=True, metavar="STORE")
    e.add_argument("--domains", nargs="+", metavar="NAME", help="default: every domain of the store")
    e.add_argument("--seq-len", type=int, metavar="S", help="tokens per window (default: the model's max_seq_len)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--max-windows", type=int, metavar="N", help="evenly spaced windows per domain (default: all)")
    e.add_argument("--out", metavar="FILE", help="write the JSON here instead of stdout")
    e.add_argument("--force", action="store_true", help="replace an existing --out")
    e.add_argument("--any-tokenizer", action="store_true", help=ANY_TOKENIZER_HELP)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_eval)

    s = subparsers.add_parser(
        "sweep",
        help="select and evaluate every domain at several keep fractions, for several models",
        description="For every model, domain and keep fraction: select experts on the domain's training "
        "documents, slice, and evaluate on its held-out documents. Writes results.json "
        "({loss: {model: {keep: {domain: loss}}}, params: ...}), report.md (tables) and loss_vs_keep.png.",
        epilog=SWEEP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = SweepConfig()
    s.add_argument("--checkpoints", nargs="+", required=True, metavar="DIR")
    s.add_argument("--names", nargs="+", metavar="NAME", help="model names in the results (default: directory names)")
    s.add_argument("--data", required=True, metavar="STORE")
    s.add_argument("--keep", default=",".join(f"{k:.3g}" if k < 1 else "1.0" for k in defaults.keep),
                   help="fractions of routed experts kept, comma-separated, each with a decimal point as in "
                   "select (default 1.0,0.5,0.25,0.125; a bare integer would be a number of experts)")
    s.add_argument("--method", choices=[m.value for m in SelectMethod], default=defaults.method.value)
    s.add_argument("--domains", nargs="+", metavar="NAME", help="default: every domain of the store")
    s.add_argument("--num-calib-windows", type=int, default=defaults.num_calib_windows, metavar="N")
    s.add_argument("--num-eval-windows", type=int, default=defaults.num_eval_windows, metavar="N",
                   help=f"held-out windows per domain (default {defaults.num_eval_windows}; 0: all)")
    s.add_argument("--seq-len", type=int, metavar="S", help="tokens per window (default: the models' max_seq_len)")
    s.add_argument("--batch-size", type=int, default=defaults.batch_size)
    s.add_argument("--seed", type=int, default=defaults.seed)
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--force", action="store_true", help="replace the results already in --out")
    s.add_argument("--any-tokenizer", action="store_true", help=ANY_TOKENIZER_HELP)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=run_sweep_cli)


def run_eval(args: argparse.Namespace) -> int:
    if args.out:
        refuse_existing(args.out, args.force)
        check_output_dir(Path(args.out).parent)
    setup_runtime()
    result = evaluate_checkpoint(
        args.checkpoint, args.data, domains=args.domains, seq_len=args.seq_len, batch_size=args.batch_size,
        max_windows_per_domain=args.max_windows, any_tokenizer=args.any_tokenizer, progress=not args.no_progress,
    )
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
    else:
        print(text, end="")
    return 0


def sweep_names(checkpoints: list[str], names: list[str] | None) -> dict[str, str]:
    """Model name -> checkpoint; names default to the checkpoint directory names, or to the run
    directory's name for a run's `final` checkpoint (runs/emo/final -> emo)."""
    names = names or [Path(c).resolve().parent.name if Path(c).name == FINAL_DIR else Path(c).name for c in checkpoints]
    if len(names) != len(checkpoints):
        raise ConfigError(f"--names: {len(names)} names for {len(checkpoints)} checkpoints")
    if len(set(names)) != len(names):
        raise ConfigError(f"--names: model names must differ, got {', '.join(names)} (pass --names)")
    return dict(zip(names, checkpoints))


def run_sweep_cli(args: argparse.Namespace) -> int:
    checkpoints = sweep_names(args.checkpoints, args.names)
    keep = [KeepSpec.parse(k).fraction for k in args.keep.split(",")]
    if None in keep:
        raise ConfigError(
            f"--keep {args.keep}: sweep keeps fractions of the routed experts, spelled with a decimal point "
            "(1.0 for all of them, 0.25); a bare integer is a number of experts, as in select"
        )
    cfg = SweepConfig.from_dict({
        "keep": keep, "method": args.method, "num_calib_windows": args.num_calib_windows,
        "num_eval_windows": args.num_eval_windows, "seq_len": args.seq_len, "batch_size": args.batch_size,
        "seed": args.seed, "domains": args.domains, "any_tokenizer": args.any_tokenizer,
    })
    check_output_dir(args.out)
    refuse_existing(Path(args.out) / RESULTS_FILE, args.force, " (results of an earlier sweep)")
    setup_runtime()
    results = run_sweep(checkpoints, args.data, cfg, progress=not args.no_progress)
    report = write_sweep(args.out, results, force=args.force)
    for name in results["loss"]:
        means = ", ".join(
            f"{k}: {mean_increase(results, name, k):+.3f}" for k in keeps_descending(results) if float(k) < 1
        )
        print(f"{name}: mean held-out loss increase {means}")
    print(f"wrote {report} and results.json in {args.out}")
    return 0
