"""Router benchmark: EMO vs standard routing in a `small` train step (`train.step.train_step`, as
`emomoe train` runs it), and the vectorised pool vs a per-document Python loop (the official code's
design). Prints one JSON object.

Legend: B batch, S sequence, T = B*S tokens, E routed experts, K experts per token.

    python bench/router.py [--quick]

Two pool measurements per documents-per-row count, each as a speedup over the loop:
- `mask`: logits -> each token's softmax over its document's pool, as the router computes it
  (`pooled_softmax`: the unmasked softmax, per-document sums, ranking, then the softmax
  renormalised over the pool, fused into one CPU kernel for float32); the loop masks the logits
  to -inf outside the pool and takes a second softmax, as the official code does;
- `route`: the whole pool path plus the top-7: the router's `top_experts` (a fused top-k) after
  ours, torch.topk after the loop, as the official code runs it.
`mask_pytorch` and `route_pytorch` time the same path with the fused kernels off: the PyTorch ops
that GPUs, other dtypes and machines without a compiler run.
With --compile, also `mask_compiled` and `route_compiled`: the PyTorch path through
torch.compile (inductor), as a `train.compile: true` run executes it inside its compiled blocks.
Timings are the best of interleaved repetitions (the variants alternate; see bench/timing).
"""

from __future__ import annotations

import argparse
import functools
import json

import torch
from timing import TOKENS_PER_S, interleaved_best, kernels_off, ratio

from emomoe import ModelConfig, build_model
from emomoe.model.docs import Segments
from emomoe.model.losses import compute_loss
from emomoe.model.pool import draw_pool_sizes, pooled_softmax
from emomoe.model.router import top_experts
from emomoe.train.config import TrainConfig
from emomoe.train.optim import build_optimizer
from emomoe.train.runtime import retain_freed_memory
from emomoe.train.step import train_step

NUM_ROUTED = 127
TOP_K = 7
POOL = (8, 128)


def random_doc_ids(num_rows: int, seq_len: int, num_docs: int, generator: torch.Generator) -> torch.Tensor:
    starts_BS = torch.zeros(num_rows, seq_len, dtype=torch.long)
    for row in starts_BS:
        row[1 + torch.randperm(seq_len - 1, generator=generator)[: num_docs - 1]] = 1
    return starts_BS.cumsum(1)


def pooled_probs(logits_TE: torch.Tensor, seg_T: torch.Tensor, num_segments: int, seed: torch.Tensor) -> torch.Tensor:
    """The router's pool path after the segments: pool-restricted probabilities [T, E]."""
    sizes_G = draw_pool_sizes(*POOL, num_segments, seed, logits_TE.device)
    return pooled_softmax(logits_TE, seg_T, num_segments, sizes_G)[0]


def vectorised_pool(logits_TE: torch.Tensor, doc_ids_BS: torch.Tensor, pool_probs=pooled_probs) -> torch.Tensor:
    segments = Segments.from_doc_ids(doc_ids_BS)
    return pool_probs(logits_TE, segments.seg_T, segments.num_segments, torch.tensor(0))


def looped_pool(logits_TE: torch.Tensor, doc_ids_BS: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The official design: boundaries to the host, one iteration per document, then the softmax
    of the masked logits: pool-restricted probabilities [T, E]."""
    B, S = doc_ids_BS.shape
    logits_BSE = logits_TE.view(B, S, -1)
    drop_BSE = torch.zeros_like(logits_BSE, dtype=torch.bool)
    for b in range(B):
        changes = (doc_ids_BS[b, 1:] != doc_ids_BS[b, :-1]).nonzero().flatten() + 1
        bounds = [0, *changes.tolist(), S]
        for start, end in zip(bounds[:-1], bounds[1:]):
            score_E = logits_BSE[b, start:end].softmax(-1).sum(0)
            d = int(torch.randint(POOL[0], POOL[1] + 1, (1,), generator=generator))
            num_drop = logits_BSE.shape[-1] - d
            if num_drop > 0:
                drop_BSE[b, start:end, (-score_E).topk(num_drop).indices] = True
    return logits_BSE.masked_fill(drop_BSE, float("-inf")).view_as(logits_TE).softmax(dim=-1)


def official_route(probs_TE: torch.Tensor) -> torch.Tensor:
    """The official tail: torch.topk."""
    return probs_TE.topk(TOP_K, dim=-1).indices


def route(probs_TE: torch.Tensor) -> torch.Tensor:
    """The router's tail: `top_experts` (the fused top-k on float32 CPU tensors)."""
    return top_experts(probs_TE, TOP_K)


def bench_pool(num_rows: int, reps: int, compile: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    results = {}
    # One graph per document count (static shapes, as a compiled training block sees them).
    compiled_probs = torch.compile(pooled_probs, dynamic=False) if compile else None
    for num_docs in (1, 8, 64, 256):
        doc_ids_BS = random_doc_ids(num_rows, 4096, num_docs, g)
        logits_TE = torch.randn(num_rows * 4096, NUM_ROUTED, generator=g)
        fns = {
            "mask_vectorised": lambda: vectorised_pool(logits_TE, doc_ids_BS),
            "mask_pytorch": kernels_off(lambda: vectorised_pool(logits_TE, doc_ids_BS)),
            "mask_loop": lambda: looped_pool(logits_TE, doc_ids_BS, g),
            "route_vectorised": lambda: route(vectorised_pool(logits_TE, doc_ids_BS)),
            "route_pytorch": kernels_off(lambda: route(vectorised_pool(logits_TE, doc_ids_BS))),
            "route_loop": lambda: official_route(looped_pool(logits_TE, doc_ids_BS, g)),
        }
        torch.testing.assert_close(fns["mask_pytorch"](), fns["mask_vectorised"](), rtol=0, atol=1e-6)
        if compiled_probs is not None:
            torch.testing.assert_close(vectorised_pool(logits_TE, doc_ids_BS, compiled_probs), fns["mask_vectorised"]())
            fns["mask_compiled"] = lambda: vectorised_pool(logits_TE, doc_ids_BS, compiled_probs)
            fns["route_compiled"] = lambda: route(vectorised_pool(logits_TE, doc_ids_BS, compiled_probs))
        best = interleaved_best(fns, reps)
        row = results[str(num_docs)] = {}
        for part in ("mask", "route"):
            loop = best[f"{part}_loop"]
            row[f"{part}_vectorised_ms"] = round(best[f"{part}_vectorised"] * 1e3, 3)
            row[f"{part}_loop_ms"] = round(loop * 1e3, 3)
            row[f"{part}_speedup"] = round(loop / best[f"{part}_vectorised"], 2)
            row[f"{part}_pytorch_ms"] = round(best[f"{part}_pytorch"] * 1e3, 3)
            row[f"{part}_pytorch_speedup"] = round(loop / best[f"{part}_pytorch"], 2)
            if compile:
                row[f"{part}_compiled_ms"] = round(best[f"{part}_compiled"] * 1e3, 3)
                row[f"{part}_compiled_speedup"] = round(loop / best[f"{part}_compiled"], 2)
    return results


def bench_train_step(batch_size: int, reps: int, mean_doc_len: int) -> dict:
    base = ModelConfig.preset("small")
    S = base.max_seq_len
    g = torch.Generator().manual_seed(0)
    ids_BS = torch.randint(0, base.vocab_size, (batch_size, S + 1), generator=g)
    doc_ids_BS = (torch.rand(batch_size, S, generator=g) < 1 / mean_doc_len).long().cumsum(1)
    batch = {"input_ids_BS": ids_BS[:, :-1], "labels_BS": ids_BS[:, 1:], "doc_ids_BS": doc_ids_BS}
    recipe = TrainConfig()
    steps = {}
    for name, pool in (("emo", base.moe.router.pool), ("standard", "off")):
        torch.manual_seed(0)
        cfg = base.with_overrides([f"moe.router.pool={pool}"])
        model = build_model(cfg)
        # The step `emomoe train` runs: its optimizer, clipping and loss.
        steps[name] = functools.partial(
            train_step, model, build_optimizer(model, recipe), [batch],
            functools.partial(compute_loss, loss_cfg=cfg.loss), grad_clip=recipe.grad_clip,
        )
    best = interleaved_best(steps, reps)
    tokens = batch_size * S
    return {
        "config": "small",
        "batch": [batch_size, S],
        "emo_step_ms": round(best["emo"] * 1e3, 1),
        "standard_step_ms": round(best["standard"] * 1e3, 1),
        "emo_tokens_per_s": round(tokens / best["emo"]),
        "standard_tokens_per_s": round(tokens / best["standard"]),
        **ratio({"emo": tokens / best["emo"], "standard": tokens / best["standard"]}, "emo", "standard", TOKENS_PER_S),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions and one row (a few seconds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the pool path through torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    retain_freed_memory()  # as in training
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "train_step": bench_train_step(batch_size=16, reps=3 if args.quick else 10, mean_doc_len=300),
        # Four 4096-token rows: the paper's per-GPU micro-batch.
        "pool_rows": 4,
        "pool_docs_per_4096": bench_pool(num_rows=4, reps=3 if args.quick else 10, compile=args.compile),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
