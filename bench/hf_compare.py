"""emomoe vs transformers' MoE models at matched settings: training step, forward, greedy generation.

Every pair has the same architecture and parameter count (checked): d_model 256, 4 layers, 4 heads,
vocab 8192, fp32, plain causal attention, untied LM head, random tokens of batch 8 x 512.
- coarse: 8 experts, top-2, expert hidden 512;  fine: 64 experts, top-8, expert hidden 128.
- olmoe: `OlmoeForCausalLM` (QK-norm over the whole projection, no shared expert, no top-k renorm);
- mixtral: `MixtralForCausalLM` (no QK-norm, top-k weights renormalised);
- qwen2_moe: `Qwen2MoeForCausalLM` (no QK-norm, no QKV bias, one shared expert of the routed
  experts' size: emomoe's shared expert, plus Qwen's sigmoid gate, which has as many parameters
  as emomoe's gate row for the shared expert).
emomoe is configured to match each family, so every ratio compares like with like. A training
step is forward, loss, backward, clipping at 1.0 and fused AdamW on both sides (emomoe's is
`train.step.train_step`, the step `emomoe train` runs).

Runs interleave (emomoe, transformers, peak GEMM, emomoe, ...) in one process; each figure is the
fastest repetition. `mfu` = analytic training FLOPs per token (`emomoe.train.flops`) x tokens/s /
the peak measured between the same repetitions, so the machine's load divides out as well as it can.
Greedy generation uses both libraries' KV caches (`emomoe.generate.generate`, `model.generate`),
for exactly the requested new tokens.

`emomoe_pytorch_ops` (training workload) is emomoe with its fused CPU kernels off
(`emomoe.kernels.disabled`), so `kernels_speedup` is what they bring. `kernels` runs, forward and
backward, only the matmul and attention kernels a training step of emomoe runs, at its shapes: the
q/k/v/o projections, the causal SDPA, the gate, the experts' grouped matmuls (tokens spread evenly
over the experts) and the LM head, once per layer where per layer. It is timed in the same
interleaving as the steps. No implementation that calls these kernels can take less time, so
`kernel_bound_mfu` (the MFU of a step that took only that long) and `kernel_bound_over_hf_tokens_per_s`
(transformers' step time over it) are ceilings: what fusing away everything else would reach, before
writing faster GEMMs or attention. `gemm_gflops` lists the rate of each model matmul shape beside
the square peak. With `--compile`, each library's
transformer blocks are also `torch.compile`d (what `train.compile: true` does; inductor generates
fused C++ loops for the elementwise work on CPU) and timed in the same interleaving, so the
compiled figures compare with each other and with the eager ones; `compile_s` is the first
training step, compiling included.

    python bench/hf_compare.py                 # all shapes and families
    python bench/hf_compare.py --quick         # coarse, OLMoE, training step and forward only
    python bench/hf_compare.py --compile --families olmoe --workloads train forward
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch
import torch.nn.functional as F
import transformers
from timing import TOKENS_PER_S, interleaved_best, kernels_off, ratio

from emomoe.generate import GenerationConfig, generate
from emomoe.model import ModelConfig, build_model
from emomoe.model.config import LossConfig, MoEConfig, RouterConfig
from emomoe.model.experts import expert_matmul
from emomoe.model.losses import compute_loss
from emomoe.train.config import TrainConfig
from emomoe.train.flops import (
    gemm_flops,
    matmul_flops_per_s,
    measure_peak_flops,
    model_gemm_shapes,
    train_flops_per_token,
)
from emomoe.train.optim import build_optimizer
from emomoe.train.parallel import compile_blocks
from emomoe.train.runtime import retain_freed_memory
from emomoe.train.step import train_step

D_MODEL, NUM_LAYERS, NUM_HEADS, VOCAB, SEQ_LEN, BATCH = 256, 4, 4, 8192, 512, 8
SHAPES = {"coarse": (8, 2, 512), "fine": (64, 8, 128)}  # experts, top-k, expert hidden
FAMILIES = ("olmoe", "mixtral", "qwen2_moe")
PEAK_SHAPE = (2048, 2048, 2048)


def emomoe_config(shape: str, family: str) -> ModelConfig:
    num_experts, top_k, hidden = SHAPES[shape]
    num_shared = 1 if family == "qwen2_moe" else 0
    return ModelConfig(
        vocab_size=VOCAB, d_model=D_MODEL, num_layers=NUM_LAYERS, num_heads=NUM_HEADS, max_seq_len=SEQ_LEN,
        qk_norm=family == "olmoe", doc_attention_mask=False, eos_id=None,
        loss=LossConfig(lb_weight=0.01, router_z_weight=0.0, logit_z_weight=0.0),  # HF: CE + 0.01 x aux
        moe=MoEConfig(
            num_experts=num_experts + num_shared, top_k=top_k, expert_hidden_size=hidden,
            router=RouterConfig(pool="off", num_shared_experts=num_shared, renormalize=family == "mixtral"),
        ),
    )


def hf_model(shape: str, family: str) -> torch.nn.Module:
    num_experts, top_k, hidden = SHAPES[shape]
    common = dict(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=NUM_LAYERS, num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS, max_position_embeddings=SEQ_LEN, tie_word_embeddings=False,
        num_experts_per_tok=top_k, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    if family == "olmoe":
        cfg = transformers.OlmoeConfig(**common, intermediate_size=hidden, num_experts=num_experts, norm_topk_prob=False)
        return transformers.OlmoeForCausalLM(cfg)
    if family == "mixtral":
        cfg = transformers.MixtralConfig(**common, intermediate_size=hidden, num_local_experts=num_experts)
        return transformers.MixtralForCausalLM(cfg)
    cfg = transformers.Qwen2MoeConfig(
        **common, moe_intermediate_size=hidden, shared_expert_intermediate_size=hidden, num_experts=num_experts,
        norm_topk_prob=False, qkv_bias=False, decoder_sparse_step=1, use_sliding_window=False,
    )
    return transformers.Qwen2MoeForCausalLM(cfg)


RECIPE = TrainConfig(lr=1e-4)
"""Both sides' optimizer and clipping: emomoe's fused AdamW with decayed matrices, which is also HF
Trainer's default (`adamw_torch_fused`), and clipping at 1.0 (HF Trainer's `max_grad_norm` too)."""


class Side:
    """One model with its optimizer and the three workloads as closures; `step(optimizer, ids_BS)`
    is one training step."""

    def __init__(self, model: torch.nn.Module, step, forward, generate):
        self.model = model
        self.optimizer = build_optimizer(model, RECIPE)
        self._step, self._forward, self._generate = step, forward, generate

    def train_step(self, ids_BS: torch.Tensor) -> None:
        self.model.train()
        self._step(self.optimizer, ids_BS)

    @torch.inference_mode()
    def forward(self, ids_BS: torch.Tensor) -> None:
        self.model.eval()
        self._forward(ids_BS)

    @torch.inference_mode()
    def generate(self, prompt_BS: torch.Tensor, new_tokens: int) -> None:
        self.model.eval()
        self._generate(prompt_BS, new_tokens)


def emomoe_side(cfg: ModelConfig) -> Side:
    model = build_model(cfg)
    loss_fn = functools.partial(compute_loss, loss_cfg=cfg.loss)

    def step(optimizer, ids_BS):  # the step `emomoe train` runs
        batch = {"input_ids_BS": ids_BS[:, :-1], "labels_BS": ids_BS[:, 1:]}
        train_step(model, optimizer, [batch], loss_fn, grad_clip=RECIPE.grad_clip)

    return Side(model, step, lambda ids_BS: model(ids_BS).logits, emomoe_generate(model))


def emomoe_generate(model: torch.nn.Module):
    """Greedy generation with emomoe's KV cache (`emomoe.generate`), no EOS stop."""

    def run(prompt_BS, new_tokens):
        cfg = GenerationConfig(max_new_tokens=new_tokens, greedy=True)
        return generate(model, prompt_BS.tolist(), cfg, eos_id=None)

    return run


def hf_side(model: torch.nn.Module) -> Side:
    def step(optimizer, ids_BS):  # what HF Trainer's training step does, without its bookkeeping
        model(input_ids=ids_BS, labels=ids_BS, output_router_logits=True, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def generate(prompt_BS, new_tokens):
        model.generate(prompt_BS, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    return Side(model, step, lambda ids_BS: model(input_ids=ids_BS, use_cache=False).logits, generate)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first_step_seconds(side: Side, ids_BS: torch.Tensor) -> float:
    """One training step's seconds: for a compiled model, the compiling it triggers included."""
    started = time.perf_counter()
    side.train_step(ids_BS)
    return time.perf_counter() - started


def compare(
    shape: str, family: str, reps: int, workloads: list[str], gen_shape: tuple[int, int, int], compiled: bool
) -> dict:
    torch.manual_seed(0)
    cfg = emomoe_config(shape, family)
    ours, theirs = emomoe_side(cfg), hf_side(hf_model(shape, family))
    g = torch.Generator().manual_seed(0)
    # The training step sees SEQ_LEN inputs on both sides (emomoe shifts outside, transformers inside).
    train_ids_BS = torch.randint(0, VOCAB, (BATCH, SEQ_LEN + 1), generator=g)
    hf_train_ids_BS = train_ids_BS[:, :-1].contiguous()
    ids_BS = train_ids_BS[:, :-1].contiguous()
    gen_batch, prompt_len, new_tokens = gen_shape
    prompt_BS = torch.randint(1, VOCAB, (gen_batch, prompt_len), generator=g)
    peak_a, peak_b = (torch.randn(m, k) for m, k in (PEAK_SHAPE[:2], PEAK_SHAPE[1:]))
    result = {
        "params": num_params(ours.model),
        "params_match": num_params(ours.model) == num_params(theirs.model),
        "hf_experts_implementation": getattr(theirs.model.config, "_experts_implementation", None),
        "hf_attn_implementation": theirs.model.config._attn_implementation,
    }
    flops_per_token = train_flops_per_token(cfg, SEQ_LEN)
    sides = {"emomoe": (ours, train_ids_BS), "hf": (theirs, hf_train_ids_BS)}
    if compiled:
        torch.manual_seed(0)
        ours_c, theirs_c = emomoe_side(cfg), hf_side(hf_model(shape, family))
        compile_blocks(ours_c.model)
        for layer in theirs_c.model.model.layers:  # the same, for transformers' decoder layers
            layer.compile()
        result["compile_s"] = {
            "emomoe": round(first_step_seconds(ours_c, train_ids_BS), 1),
            "hf": round(first_step_seconds(theirs_c, hf_train_ids_BS), 1),
        }
        sides |= {"emomoe_compiled": (ours_c, train_ids_BS), "hf_compiled": (theirs_c, hf_train_ids_BS)}
    for workload in workloads:
        if workload == "train":
            fns = {name: (lambda s=side, x=x: s.train_step(x)) for name, (side, x) in sides.items()}
            fns["peak"] = lambda: torch.mm(peak_a, peak_b)
            fns["kernels"] = step_kernels(cfg)
            torch.manual_seed(0)
            plain = emomoe_side(cfg)  # the same model, run with the fused CPU kernels off
            fns["emomoe_pytorch_ops"] = kernels_off(lambda: plain.train_step(train_ids_BS))
            tokens = BATCH * SEQ_LEN
        elif workload == "forward":
            fns = {name: (lambda s=side: s.forward(ids_BS)) for name, (side, _) in sides.items()}
            tokens = BATCH * SEQ_LEN
        else:
            fns = {"emomoe": lambda: ours.generate(prompt_BS, new_tokens),
                   "hf": lambda: theirs.generate(prompt_BS, new_tokens)}
            tokens = gen_batch * new_tokens
        best = interleaved_best(fns, reps)
        row = {name: round(tokens / seconds) for name, seconds in best.items() if name not in ("peak", "kernels")}
        row |= ratio(row, "emomoe", "hf", TOKENS_PER_S)
        if "emomoe_pytorch_ops" in row:
            row["kernels_speedup"] = round(row["emomoe"] / row["emomoe_pytorch_ops"], 3)
        if "emomoe_compiled" in row:
            row |= ratio(row, "emomoe_compiled", "hf", TOKENS_PER_S)
            row |= ratio(row, "emomoe_compiled", "hf_compiled", TOKENS_PER_S)
        if "peak" in best:
            peak = gemm_flops(*PEAK_SHAPE) / best["peak"]
            row["peak_gflops"] = round(peak / 1e9, 1)
            for name in sides:
                row[f"{name}_mfu"] = round(flops_per_token * row[name] / peak, 3)
            row["kernel_bound_mfu"] = round(flops_per_token * tokens / best["kernels"] / peak, 3)
            kernel_bound = {"kernel_bound": tokens / best["kernels"], "hf": tokens / best["hf"]}
            row |= ratio(kernel_bound, "kernel_bound", "hf", TOKENS_PER_S)
        result[f"{workload}_tokens_per_s"] = row
    return result


def gemm_rates(shapes: list[str]) -> dict:
    """GFLOP/s of large square matmuls (the peak MFU divides by) and of each model's own matmuls."""
    rates = {"peak_square": round(measure_peak_flops(seconds=1.0) / 1e9, 1)}
    for shape in shapes:
        for name, mkn in model_gemm_shapes(emomoe_config(shape, "olmoe"), BATCH * SEQ_LEN).items():
            rates[f"{shape}/{name}{list(mkn)}"] = round(matmul_flops_per_s(*mkn, seconds=0.2) / 1e9, 1)
    return rates


def step_kernels(cfg: ModelConfig):
    """A closure running the matmul and attention kernels of one emomoe training step, forward and
    backward, on random operands of the step's shapes (see the module doc)."""
    g = torch.Generator().manual_seed(0)
    T, D, heads = BATCH * SEQ_LEN, cfg.d_model, cfg.num_heads
    routed, top_k, hidden = cfg.moe.routed_in_layer(0), cfg.moe.top_k_in_layer(0), cfg.moe.expert_hidden_size

    def leaf(*shape):
        return (0.02 * torch.randn(*shape, generator=g)).requires_grad_()

    x_TD, head_in_TD = leaf(T, D), leaf(T, D)
    proj_weights = [leaf(D, D) for _ in range(4)]
    q, k, v = (leaf(BATCH, heads, SEQ_LEN, D // heads) for _ in range(3))
    gate_ED, lm_head_VD = leaf(routed + cfg.moe.router.num_shared_experts, D), leaf(cfg.vocab_size, D)
    x_ND, h_NF = leaf(T * top_k, D), leaf(T * top_k, hidden)
    w1, w3, w2 = leaf(routed, hidden, D), leaf(routed, hidden, D), leaf(routed, D, hidden)
    counts_E = torch.full((routed,), T * top_k // routed)
    counts_E[: T * top_k - int(counts_E.sum())] += 1
    wide = hidden * cfg.moe.router.num_shared_experts  # the shared experts side by side
    shared_in_TF, shared_up, shared_gate, shared_down = leaf(T, wide), leaf(wide, D), leaf(wide, D), leaf(D, wide)
    leaves = [x_TD, head_in_TD, *proj_weights, q, k, v, gate_ED, lm_head_VD, x_ND, h_NF, w1, w3, w2,
              shared_in_TF, shared_up, shared_gate, shared_down]

    def run() -> None:
        outs = []
        for _ in range(cfg.num_layers):
            outs += [x_TD @ w.T for w in proj_weights]
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True))
            outs.append(x_TD @ gate_ED.T)
            outs += [expert_matmul(x_ND, w, counts_E) for w in (w1, w3)] + [expert_matmul(h_NF, w2, counts_E)]
            if wide:
                outs += [x_TD @ shared_up.T, x_TD @ shared_gate.T, shared_in_TF @ shared_down.T]
        outs.append(head_in_TD @ lm_head_VD.T)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        for t in leaves:
            t.grad = None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="coarse shape, OLMoE only, 2 repetitions, no generation")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--workloads", nargs="+", default=["train", "forward", "generate"],
                        choices=["train", "forward", "generate"])
    parser.add_argument("--compile", action="store_true",
                        help="also time both libraries with their transformer blocks torch.compile'd")
    parser.add_argument("--gen", type=int, nargs=3, default=[1, 64, 64], metavar=("BATCH", "PROMPT", "NEW"),
                        help="greedy generation: batch, prompt tokens, new tokens")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.families, args.reps, args.workloads = ["coarse"], ["olmoe"], 2, ["train", "forward"]
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    retained = retain_freed_memory()  # what emomoe's trainer does; it speeds up both sides
    transformers.logging.set_verbosity_error()
    result = {
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
        "retain_freed_memory": retained,
        "reps": args.reps, "batch": [BATCH, SEQ_LEN], "generate_batch_prompt_new": args.gen,
    }
    result["gemm_gflops"] = gemm_rates(args.shapes)
    for shape in args.shapes:
        for family in args.families:
            result[f"{shape}/{family}"] = compare(
                shape, family, args.reps, args.workloads, tuple(args.gen), args.compile
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
