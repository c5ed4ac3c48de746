"""Weight-only integer matmuls for decoding: emomoe's kernel against ATen's CPU ones.

One decoded token multiplies a [1, 2048] activation by the chosen weight matrices, each read
once from memory. This times that product for matrices of the 14B topology's experts ([1024,
2048] and [2048, 1024] are the same bytes), cycling through enough matrices that none is in
cache when it is read again:

- `emomoe_int8`, `emomoe_int4`: `emomoe.model.linear.grouped_linear` on integer weights (groups of
  128 and 32 inputs, float32 activations), what `emomoe quantize`d models run: the
  `int_grouped_linear` kernel, or its PyTorch twin where the kernels are not built;
- `aten_int8_fp32_act`: `torch._weight_int8pack_mm`, per-row scales, float32 activations;
- `aten_int8_bf16_act`: the same with bf16 activations (its fast path; it rounds the activations);
- `aten_int4_fp32_act`: `torch._weight_int4pack_mm_for_cpu`, groups of 32 (asymmetric);
- `emomoe_bf16`: the same on the unquantized bf16 weights (`bf16_grouped_linear`).

Each variant's weight bytes per second says how close it comes to the memory bandwidth; ratios
are times per product measured in one run, interleaved (below 1: the first is faster).

With `--crossover`, where decoding's kernel stops paying: 8 experts of 1024 x 2048 with 1, 2, 4,
8 and 16 rows each (a prompt's tokens spread over the chosen experts), the kernel against the
tile-and-GEMM path (`kernels_off`), in int8 and bf16: a time ratio below 1 means the
kernel is faster (`emomoe.model.linear.DECODE_ROWS` is set from this).

    python bench/int_kernels.py --quick
    python bench/int_kernels.py
    python bench/int_kernels.py --crossover
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from emomoe import kernels
from emomoe.model.linear import grouped_linear
from emomoe.model.quantized import quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import SECONDS, interleaved_best, kernels_off, ratio  # noqa: E402

F, D = 1024, 2048


def variants(num_matrices: int) -> tuple[dict, dict]:
    """Callables that each multiply one activation row by the next matrix, and their bytes per call."""
    gen = torch.Generator().manual_seed(0)
    w = [torch.randn(F, D, generator=gen) * 0.02 for _ in range(num_matrices)]
    x_1D, counts_E = torch.randn(1, D, generator=gen), torch.ones(1, dtype=torch.long)
    q8 = [quantize(m, 8, 128) for m in w]
    q4 = [quantize(m, 4, 32) for m in w]
    bf16 = [m.bfloat16()[None] for m in w]
    scale_F = [m.abs().amax(1) / 127 for m in w]
    aten8 = [(m / s[:, None]).round().to(torch.int8) for m, s in zip(w, scale_F)]
    aten4, aten4_scales = [], []
    for m in w:
        groups = m.view(F, D // 32, 32)
        low, high = groups.amin(-1), groups.amax(-1)
        step = (high - low).clamp(min=1e-8) / 15
        ints = ((groups - low[..., None]) / step[..., None]).round().clamp(0, 15).to(torch.int32).view(F, D)
        aten4.append(torch._convert_weight_to_int4pack_for_cpu(ints, 1))
        aten4_scales.append(torch.stack([step, low + 8 * step], -1).transpose(0, 1).contiguous())
    x_bf16 = x_1D.bfloat16()
    counter = {"i": 0}

    def cycling(fn):
        def call():
            counter["i"] = (counter["i"] + 1) % num_matrices
            return fn(counter["i"])
        return call

    calls = {
        "emomoe_int8": cycling(lambda i: grouped_linear(x_1D, q8[i][None], counts_E)),
        "emomoe_int4": cycling(lambda i: grouped_linear(x_1D, q4[i][None], counts_E)),
        "aten_int8_fp32_act": cycling(lambda i: torch._weight_int8pack_mm(x_1D, aten8[i], scale_F[i])),
        "aten_int8_bf16_act": cycling(lambda i: torch._weight_int8pack_mm(x_bf16, aten8[i], scale_F[i].bfloat16())),
        "aten_int4_fp32_act": cycling(lambda i: torch._weight_int4pack_mm_for_cpu(x_1D, aten4[i], 32, aten4_scales[i])),
        "emomoe_bf16": cycling(lambda i: grouped_linear(x_1D, bf16[i], counts_E)),
    }
    nbytes = {
        "emomoe_int8": q8[0].nbytes, "emomoe_int4": q4[0].nbytes, "aten_int8_fp32_act": F * D + 4 * F,
        "aten_int8_bf16_act": F * D + 2 * F, "aten_int4_fp32_act": F * D // 2 + aten4_scales[0].nbytes,
        "emomoe_bf16": 2 * F * D,
    }
    return calls, nbytes


CROSSOVER_EXPERTS = 8
CROSSOVER_ROWS = (1, 2, 4, 8, 16)


def crossover(reps: int) -> dict:
    """Seconds of the kernel over those of the tile-and-GEMM path, per width and rows per expert."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(CROSSOVER_EXPERTS, F, D, generator=gen) * 0.02
    weights = {"int8": quantize(w, 8, 128), "bf16": w.bfloat16()}
    out = {}
    for width, w_EFD in weights.items():
        for rows in CROSSOVER_ROWS:
            x_ND = torch.randn(rows * CROSSOVER_EXPERTS, D, generator=gen)
            counts_E = torch.full((CROSSOVER_EXPERTS,), rows)
            call = lambda: grouped_linear(x_ND, w_EFD, counts_E)  # noqa: E731
            seconds = interleaved_best({"kernel": call, "gemm": kernels_off(call)}, reps)
            out[f"{width}_rows_{rows}"] = ratio(seconds, "kernel", "gemm", SECONDS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few matrices, few repetitions")
    parser.add_argument("--crossover", action="store_true", help="kernel against GEMM by rows per expert")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.crossover:
        print(json.dumps({"cpu": kernels.cpu_summary(), "threads": args.threads, "shape": [F, D],
                          "experts": CROSSOVER_EXPERTS, "crossover": crossover(5)}))
        return
    # 8 matrices (17 MB of bf16) in --quick; 96 (400 MB) otherwise, far beyond any cache.
    num_matrices, reps, calls_per_rep = (8, 3, 16) if args.quick else (96, 7, 192)
    calls, nbytes = variants(num_matrices)
    seconds = interleaved_best({name: _repeat(fn, calls_per_rep) for name, fn in calls.items()}, reps)
    per_s = {name: calls_per_rep / s for name, s in seconds.items()}
    ratios = {}
    for a, b in [("emomoe_int8", "aten_int8_fp32_act"), ("emomoe_int8", "aten_int8_bf16_act"),
                 ("emomoe_int4", "aten_int4_fp32_act"), ("emomoe_int8", "emomoe_bf16"), ("emomoe_int4", "emomoe_bf16")]:
        ratios |= ratio(seconds, a, b, SECONDS)
    print(json.dumps({
        "cpu": kernels.cpu_summary(),
        "kernels_isa": kernels.ops().vector_isa() if kernels.ops() is not None else None,
        "threads": args.threads,
        "shape": [F, D],
        "matrices": num_matrices,
        "weight_bytes_per_s": {name: round(per_s[name] * nbytes[name]) for name in calls},
        "matrices_per_s": {name: round(v, 1) for name, v in per_s.items()},
        "ratios": ratios,
    }))


def _repeat(fn, n: int):
    def run():
        for _ in range(n):
            fn()
    return run


if __name__ == "__main__":
    main()
