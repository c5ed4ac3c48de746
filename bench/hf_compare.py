"""emomoe vs transformers' MoE models at matched settings: training step, forward, greedy generation.

Every pair has the same architecture and parameter count (checked): d_model 256, 4 layers, 4 heads,
vocab 8192, fp32, plain causal attention, untied LM head, random tokens of batch 8 x 512.
- coarse: 8 experts, top-2, expert hidden 512;  fine: 64 experts, top-8, expert hidden 128.
- olmoe: `OlmoeForCausalLM` (QK-norm over the whole projection, no shared expert, no top-k renorm);
- mixtral: `MixtralForCausalLM` (no QK-norm, top-k weights renormalised);
- qwen2_moe: `Qwen2MoeForCausalLM` (no QK-norm, no QKV bias, one shared expert of the routed
  experts' size: emomoe's shared expert, plus Qwen's sigmoid gate, which has as many parameters
  as emomoe's gate row for the shared expert).
emomoe is configured to match each family, so every ratio compares like with like.

Runs interleave (emomoe, transformers, peak GEMM, emomoe, ...) in one process; each figure is the
fastest repetition. `mfu` = analytic training FLOPs per token (`emomoe.train.flops`) x tokens/s /
the peak measured between the same repetitions, so the machine's load divides out as well as it can.
Greedy generation uses both libraries' KV caches (`emomoe.generate.generate`, `model.generate`),
for exactly the requested new tokens.

`gemm_bound_mfu` is the MFU a training step would reach if every matmul ran at the rate measured
for its own shape (`gemm_gflops`) and nothing else took any time: the ceiling for fp32 on this
machine, before attention, elementwise work and the optimizer. With `--compile`, each library's
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
import json
import time

import torch
import transformers

from emomoe.generate import GenerationConfig, generate
from emomoe.model import ModelConfig, build_model
from emomoe.model.config import LossConfig, MoEConfig, RouterConfig
from emomoe.model.losses import compute_loss
from emomoe.train.config import TrainConfig
from emomoe.train.flops import (
    gemm_flops, matmul_flops_per_s, measure_peak_flops, model_gemm_shapes, train_flops_per_token,
)
from emomoe.train.optim import build_optimizer
from emomoe.train.parallel import compile_blocks
from emomoe.train.runtime import retain_freed_memory

from timing import interleaved_best

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


class Side:
    """One model with its optimizer and the three workloads as closures. Both sides get emomoe's
    optimizer: fused AdamW with decayed matrices, which is also HF Trainer's default (`adamw_torch_fused`)."""

    def __init__(self, model: torch.nn.Module, step_loss, forward, generate):
        self.model = model
        self.optimizer = build_optimizer(model, TrainConfig(lr=1e-4))
        self._step_loss, self._forward, self._generate = step_loss, forward, generate

    def train_step(self, ids_BS: torch.Tensor) -> None:
        self.model.train()
        self._step_loss(ids_BS).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

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

    def step_loss(ids_BS):
        return compute_loss(model(ids_BS[:, :-1], labels_BS=ids_BS[:, 1:]), ids_BS[:, 1:], cfg.loss)["total"]

    return Side(model, step_loss, lambda ids_BS: model(ids_BS).logits, emomoe_generate(model))


def emomoe_generate(model: torch.nn.Module):
    """Greedy generation with emomoe's KV cache (`emomoe.generate`), no EOS stop."""

    def run(prompt_BS, new_tokens):
        cfg = GenerationConfig(max_new_tokens=new_tokens, greedy=True)
        return generate(model, prompt_BS.tolist(), cfg, eos_id=None)

    return run


def hf_side(model: torch.nn.Module) -> Side:
    def step_loss(ids_BS):
        return model(input_ids=ids_BS, labels=ids_BS, output_router_logits=True, use_cache=False).loss

    def generate(prompt_BS, new_tokens):
        model.generate(prompt_BS, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    return Side(model, step_loss, lambda ids_BS: model(input_ids=ids_BS, use_cache=False).logits, generate)


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
            tokens = BATCH * SEQ_LEN
        elif workload == "forward":
            fns = {name: (lambda s=side: s.forward(ids_BS)) for name, (side, _) in sides.items()}
            tokens = BATCH * SEQ_LEN
        else:
            fns = {"emomoe": lambda: ours.generate(prompt_BS, new_tokens),
                   "hf": lambda: theirs.generate(prompt_BS, new_tokens)}
            tokens = gen_batch * new_tokens
        best = interleaved_best(fns, reps)
        row = {name: round(tokens / seconds) for name, seconds in best.items() if name != "peak"}
        row["emomoe_over_hf"] = round(row["emomoe"] / row["hf"], 3)
        if "emomoe_compiled" in row:
            row["compiled_emomoe_over_hf"] = round(row["emomoe_compiled"] / row["hf"], 3)
            row["compiled_emomoe_over_compiled_hf"] = round(row["emomoe_compiled"] / row["hf_compiled"], 3)
        if "peak" in best:
            peak = gemm_flops(*PEAK_SHAPE) / best["peak"]
            row["peak_gflops"] = round(peak / 1e9, 1)
            for name in sides:
                row[f"{name}_mfu"] = round(flops_per_token * row[name] / peak, 3)
        result[f"{workload}_tokens_per_s"] = row
    return result


def gemm_rates(shapes: list[str]) -> tuple[dict, dict]:
    """GFLOP/s of large square matmuls (the peak MFU divides by) and of each model's own matmuls;
    and per shape the GEMM-bound MFU (see the module doc)."""
    peak = measure_peak_flops(seconds=1.0)
    rates, bounds = {"peak_square": round(peak / 1e9, 1)}, {}
    for shape in shapes:
        cfg = emomoe_config(shape, "olmoe")
        measured = {
            name: (mkn, matmul_flops_per_s(*mkn, seconds=0.2))
            for name, mkn in model_gemm_shapes(cfg, BATCH * SEQ_LEN).items()
        }
        rates |= {f"{shape}/{name}{list(mkn)}": round(rate / 1e9, 1) for name, (mkn, rate) in measured.items()}
        bounds[shape] = round(gemm_bound_mfu(cfg, measured, peak), 3)
    return rates, bounds


# How many matmuls of each measured shape a layer runs per forward: q and output projections share
# the q shape, k and v the kv shape; an expert runs gate and up (the up shape) and down.
GEMMS_PER_LAYER = {"attention_q": 2, "attention_kv": 2, "expert_up": 2, "expert_down": 1, "shared_expert_up": 3}


def gemm_bound_mfu(cfg: ModelConfig, measured: dict[str, tuple[tuple[int, int, int], float]], peak: float) -> float:
    """Training FLOPs per token / the time its matmuls take at their measured rates, over `peak`.
    Backward matmuls are taken at the forward shape's rate; the FLOPs no measured shape covers
    (attention scores, the router) are charged at the peak, which flatters the bound."""
    tokens = BATCH * SEQ_LEN
    total = train_flops_per_token(cfg, SEQ_LEN) * tokens
    seconds, covered = 0.0, 0.0
    for name, (mkn, rate) in measured.items():
        count = 1 if name == "lm_head" else cfg.num_layers * GEMMS_PER_LAYER[name]
        if name.startswith("expert_"):
            count *= cfg.moe.routed_in_layer(0)
        flops = 3 * count * gemm_flops(*mkn)
        seconds, covered = seconds + flops / rate, covered + flops
    seconds += (total - covered) / peak
    return total / seconds / peak


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
    result["gemm_gflops"], result["gemm_bound_mfu"] = gemm_rates(args.shapes)
    for shape in args.shapes:
        for family in args.families:
            result[f"{shape}/{family}"] = compare(
                shape, family, args.reps, args.workloads, tuple(args.gen), args.compile
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
