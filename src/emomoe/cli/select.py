"""`emomoe select`, `emomoe finetune`, `emomoe merge`: carve out, train and merge back expert subsets."""

from __future__ import annotations

import argparse
import json

from emomoe.checkpoint import load_config
from emomoe.errors import ConfigError, DataError
from emomoe.experiments.finetune import FinetuneLoss, finetune_subset
from emomoe.io import refuse_existing
from emomoe.select.calibration import load_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.merge import merge_subset
from emomoe.select.methods import SelectMethod
from emomoe.select.subset import select_subset
from emomoe.train.runtime import setup_runtime

SELECT_EXAMPLES = """examples:
  emomoe select --checkpoint runs/emo/final --data runs/store --calib math --keep 0.25 --out subsets/emo-math
  emomoe select --checkpoint runs/emo/final --data runs/store --calib code,legal --keep 8 --out subsets/emo-cl
  emomoe select --checkpoint runs/emo/final --calib prompts.jsonl --tokenizer runs/store/tokenizer \\
      --keep 8,8,4,4 --method easy-ep --out subsets/emo-prompts
  emomoe select --checkpoint runs/emo/final --selection subsets/emo-math/selection.json --out subsets/again
"""
FINETUNE_EXAMPLES = """examples:
  emomoe finetune --checkpoint subsets/emo-math --data runs/store --max-steps 100 --out subsets/emo-math-ft
  emomoe finetune --checkpoint subsets/emo-math --data runs/store --pairs qa.jsonl --out subsets/emo-math-qa
"""
MERGE_EXAMPLES = """examples:
  emomoe merge --full runs/emo/final --subset subsets/emo-math-ft --out runs/emo-math-merged
"""


ANY_TOKENIZER_HELP = "go ahead even if the data was made with another tokenizer than the model's (results are then meaningless unless the text is the same)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select",
        help="choose a per-domain subset of experts and save it as a smaller model",
        description="Rank each MoE layer's routed experts on calibration data, keep the top ones (shared "
        "experts always stay), physically slice the rest away, and save the subset (safetensors in the stored "
        "dtype, model.yaml, selection.json). The subset loads on its own and routes by softmax over the kept "
        "experts. The checkpoint (ours or a Hugging Face directory, sharded or not) is streamed one layer at a "
        "time, so it may be larger than memory. With --selection, the experts kept by an earlier selection of "
        "the same checkpoint are extracted again, without calibration.",
        epilog=SELECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model checkpoint (EMO or standard)")
    p.add_argument(
        "--calib", metavar="SOURCE",
        help="calibration data: domain(s) of the --data store, comma-separated for one subset serving their "
        "union, or text files (jsonl/parquet/.txt folder); not needed for --method random. At least 64 tokens "
        "(fewer than 512 get a warning)",
    )
    p.add_argument("--data", metavar="STORE", help="token store whose training documents --calib domains name")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer for text-file calibration (default: the store's)")
    p.add_argument(
        "--keep",
        help="routed experts kept per layer: a count (8), a fraction of the routed experts (0.25), "
        "or one count per MoE layer (8,8,4,4); required unless --selection",
    )
    p.add_argument(
        "--selection", metavar="FILE",
        help="keep the experts of this selection.json (or subset directory), made from the same checkpoint",
    )
    p.add_argument("--method", choices=[m.value for m in SelectMethod], default=SelectMethod.LAYERWISE.value,
                   help="layerwise (default; the paper's greedy), global, easy-ep or random")
    p.add_argument("--num-calib-windows", type=int, default=64, metavar="N",
                   help="calibration windows of --seq-len tokens (default 64; the paper found one document enough)")
    p.add_argument(
        "--seq-len", type=int, metavar="S", help="tokens per calibration window (default: the model's max_seq_len)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of --method random")
    p.add_argument("--out", required=True, metavar="DIR", help="directory of the subset checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--any-tokenizer", action="store_true", help=ANY_TOKENIZER_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_select)

    f = subparsers.add_parser(
        "finetune",
        help="fine-tune a subset on its domain (AdamW, small LR, one epoch)",
        description="Train every parameter of a subset (or any model) with the paper's recipe: AdamW, lr 5e-5, "
        "10%% warmup then linear decay to 0, clipping at 1.0, one epoch; routing without the document pool; "
        "CE plus load balancing at 0.01 (averaged over layers), no z-losses unless asked for. Data: the "
        "training documents of the subset's domain(s), or a jsonl file of prompt/answer pairs (loss on the "
        "answers only, unless --no-answer-only).",
        epilog=FINETUNE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--checkpoint", required=True, metavar="DIR", help="subset (or any model) checkpoint")
    f.add_argument("--data", required=True, metavar="STORE", help="token store (its tokenizer encodes --pairs)")
    f.add_argument("--domains", nargs="+", metavar="NAME", help="default: the domains the subset was selected on")
    f.add_argument("--pairs", metavar="FILE", help='jsonl of {"prompt": ..., "answer": ...} records to train on instead')
    f.add_argument("--answer-only", action=argparse.BooleanOptionalAction, default=True,
                   help="with --pairs: loss on the answer tokens only (default: on, as in the paper)")
    f.add_argument("--lr", type=float, default=5e-5)
    f.add_argument("--epochs", type=float, default=1.0, help="passes over the training data (default 1)")
    f.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    f.add_argument("--seq-len", type=int, metavar="S", help="tokens per window (default: the model's max_seq_len)")
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--lb-weight", type=float, default=0.01, help="load balancing weight (default 0.01, HF's)")
    f.add_argument("--router-z-weight", type=float, default=0.0, help="router z-loss weight (default 0)")
    f.add_argument("--logit-z-weight", type=float, default=0.0, help="output-logit z-loss weight (default 0)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True, metavar="DIR")
    f.add_argument("--num-eval-windows", type=int, default=64, metavar="N",
                   help="held-out windows per domain for the loss before and after (default 64; 0: all)")
    f.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="steps between checkpoints that --resume continues from (default 0: only on Ctrl-C)")
    f.add_argument("--resume", action="store_true", help="continue an interrupted fine-tuning into --out")
    f.add_argument("--force", action="store_true", help="replace an existing --out (or an interrupted run into it)")
    f.add_argument("--any-tokenizer", action="store_true", help=ANY_TOKENIZER_HELP)
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=run_finetune)

    m = subparsers.add_parser(
        "merge",
        help="merge a subset's experts back into the full model at their original ids",
        description="Copy (or blend with --alpha) the subset's routed experts into the full model it was "
        "selected from. Router rows, shared experts and non-MoE weights stay unless asked for.",
        epilog=MERGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--full", required=True, metavar="DIR", help="the checkpoint the subset was selected from")
    m.add_argument("--subset", required=True, metavar="DIR", help="the (fine-tuned) subset")
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument("--alpha", type=float, default=1.0, help="merged = (1 - alpha) * full + alpha * subset (default 1)")
    m.add_argument("--router", action="store_true", help="also merge the kept experts' router rows")
    m.add_argument("--shared", action="store_true", help="also merge the shared experts")
    m.add_argument("--non-moe", action="store_true", help="also merge attention, norms and embeddings")
    m.add_argument("--force", action="store_true", help="replace an existing --out")
    m.add_argument("--any-source", action="store_true",
                   help="merge even if --full is not the exact checkpoint the subset was selected from")
    m.set_defaults(func=run_merge)


def run_select(args: argparse.Namespace) -> int:
    refuse_existing(args.out, args.force)
    if (args.keep is None) == (args.selection is None):
        raise ConfigError("give either --keep (and calibration) or --selection (an earlier selection to reuse)")
    # A spelling error should not wait for the model and data to load.
    keep = KeepSpec.parse(args.keep) if args.keep is not None else None
    setup_runtime()
    method = SelectMethod(args.method)
    calibration = None
    if method.needs_calibration and args.selection is None:
        if args.calib is None:
            raise DataError(f"--method {method} needs --calib (domains of --data, or text files)")
        seq_len = args.seq_len or load_config(args.checkpoint).max_seq_len
        calibration = load_calibration(
            args.calib, store=args.data, tokenizer=args.tokenizer, num_windows=args.num_calib_windows,
            seq_len=seq_len, batch_size=args.batch_size,
        )
    record = select_subset(
        args.checkpoint, args.out, keep=keep, method=method, calibration=calibration, seed=args.seed,
        selection=args.selection, any_tokenizer=args.any_tokenizer, force=args.force, progress=not args.no_progress,
    )
    kept = ", ".join(str(len(k)) for k in record["kept_experts"])
    total, source_total = record["num_params"]["total"], record["source_num_params"]["total"]
    print(f"wrote {args.out}: routed experts kept per MoE layer {kept} (+ shared); "
          f"{total:,} of {source_total:,} parameters ({total / source_total:.1%})")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    refuse_existing(args.out, args.force)
    setup_runtime()
    loss = FinetuneLoss(args.lb_weight, args.router_z_weight, args.logit_z_weight)
    done = finetune_subset(
        args.checkpoint, args.data, args.out, domains=args.domains, pairs=args.pairs, answer_only=args.answer_only,
        lr=args.lr, num_epochs=args.epochs, max_steps=args.max_steps, seq_len=args.seq_len,
        batch_size=args.batch_size, loss=loss, seed=args.seed, num_eval_windows=args.num_eval_windows,
        checkpoint_every=args.checkpoint_every, resume=args.resume, any_tokenizer=args.any_tokenizer,
        force=args.force, progress=not args.no_progress,
    )
    held_out = ", ".join(f"{d} {done['val_before'][d]:.3f} -> {v:.3f}" for d, v in done["val_after"].items())
    data = done.get("pairs") or ", ".join(done["domains"])
    print(f"wrote {args.out}: {done['num_steps']} steps on {data}; "
          f"train CE {done['first_ce']:.3f} -> {done['last_ce']:.3f}; held-out CE {held_out or 'n/a (no validation data)'}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    refuse_existing(args.out, args.force)
    merged = merge_subset(
        args.full, args.subset, args.out, alpha=args.alpha, router=args.router, shared=args.shared,
        non_moe=args.non_moe, any_source=args.any_source, force=args.force,
    )
    print(f"wrote {args.out}: " + json.dumps(merged))
    return 0
