"""Inference speed of a 25% expert subset vs the full model: forward and greedy generation.

A subset keeps a quarter of each layer's routed experts (and every shared expert) but still routes
each token to top-k of them, so it does the same matmul work per token with less memory; this
measures what that is worth. Both models run interleaved in one process; prints one JSON object.

    python bench/subset.py                                   # the demo architecture (`small`), random weights
    python bench/subset.py --full runs/demo/emo/final --subset subsets/emo-code
    python bench/subset.py --subset BIG_SUBSET               # only the subset (a full model too big for RAM)
    python bench/subset.py --quick

Without checkpoints the subset keeps experts 0..n/4-1 of every layer (which experts does not
change the speed). Forward: batch x seq random tokens; generation: greedy with the KV cache for
exactly `--new-tokens` tokens after a random prompt.
"""

from __future__ import annotations

import argparse
import json

import torch
from timing import TOKENS_PER_S, interleaved_best, ratio

from emomoe.checkpoint import load_for_inference
from emomoe.generate import GenerationConfig, generate
from emomoe.model import ModelConfig, build_model
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model
from emomoe.train.runtime import retain_freed_memory

KEEP_FRACTION = 0.25


def demo_models() -> dict[str, torch.nn.Module]:
    cfg = ModelConfig.preset("small").with_overrides(["moe.router.pool=off"])
    torch.manual_seed(0)
    full = build_model(cfg).eval()
    layers = moe_layers(cfg)
    kept = [list(range(max(1, round(layer.num_routed * KEEP_FRACTION)))) for layer in layers]
    subset, _ = slice_model(full, cfg, layers, kept)
    return {"full": full, "subset": subset.eval()}


def workloads(model: torch.nn.Module, batch: tuple[int, int], gen: tuple[int, int, int]) -> dict:
    vocab = model.cfg.vocab_size
    g = torch.Generator().manual_seed(0)
    ids_BS = torch.randint(1, vocab, batch, generator=g)
    prompts = torch.randint(1, vocab, gen[:2], generator=g).tolist()
    gen_cfg = GenerationConfig(max_new_tokens=gen[2], greedy=True)

    @torch.inference_mode()
    def forward():
        model(ids_BS)

    return {"forward": forward, "generate": lambda: generate(model, prompts, gen_cfg, eos_id=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", help="the full model's checkpoint (default: `small`, random weights)")
    parser.add_argument("--subset", help="the subset's checkpoint (default: a quarter of --full's experts)")
    parser.add_argument("--batch", type=int, nargs=2, default=[8, 256], metavar=("ROWS", "SEQ"))
    parser.add_argument("--gen", type=int, nargs=3, default=[1, 32, 64], metavar=("BATCH", "PROMPT", "NEW"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small batch, 8 new tokens, 2 repetitions")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.gen, args.reps = [2, 64], [1, 8, 8], 2
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    retain_freed_memory()
    if args.full is None and args.subset is None:
        models = demo_models()
    else:
        paths = {"full": args.full, "subset": args.subset}
        models = {name: load_for_inference(path)[0] for name, path in paths.items() if path}
    result = {"threads": args.threads, "reps": args.reps, "batch": args.batch, "generate_batch_prompt_new": args.gen,
              "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}}
    runs = {name: workloads(m, tuple(args.batch), tuple(args.gen)) for name, m in models.items()}
    tokens = {"forward": args.batch[0] * args.batch[1], "generate": args.gen[0] * args.gen[2]}
    for workload, count in tokens.items():
        best = interleaved_best({name: run[workload] for name, run in runs.items()}, args.reps)
        row = {name: round(count / seconds) for name, seconds in best.items()}
        if len(row) == 2:
            row |= ratio(row, "subset", "full", TOKENS_PER_S)
        result[f"{workload}_tokens_per_s"] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
