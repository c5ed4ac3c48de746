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

    python bench/hf_compare.py                 # all shapes and families
    python bench/hf_compare.py --quick         # coarse, OLMoE, training step and forward only
"""

from __future__ import annotations

import argparse
import json

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


def compare(shape: str, family: str, reps: int, workloads: list[str], gen_shape: tuple[int, int, int]) -> dict:
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
    for workload in workloads:
        if workload == "train":
            fns = {"emomoe": lambda: ours.train_step(train_ids_BS), "hf": lambda: theirs.train_step(hf_train_ids_BS),
                   "peak": lambda: torch.mm(peak_a, peak_b)}
            tokens = BATCH * SEQ_LEN
        elif workload == "forward":
            fns = {"emomoe": lambda: ours.forward(ids_BS), "hf": lambda: theirs.forward(ids_BS)}
            tokens = BATCH * SEQ_LEN
        else:
            fns = {"emomoe": lambda: ours.generate(prompt_BS, new_tokens),
                   "hf": lambda: theirs.generate(prompt_BS, new_tokens)}
            tokens = gen_batch * new_tokens
        best = interleaved_best(fns, reps)
        row = {name: round(tokens / seconds) for name, seconds in best.items() if name != "peak"}
        row["emomoe_over_hf"] = round(row["emomoe"] / row["hf"], 3)
        if "peak" in best:
            peak = gemm_flops(*PEAK_SHAPE) / best["peak"]
            row["peak_gflops"] = round(peak / 1e9, 1)
            row["emomoe_mfu"] = round(flops_per_token * row["emomoe"] / peak, 3)
            row["hf_mfu"] = round(flops_per_token * row["hf"] / peak, 3)
        result[f"{workload}_tokens_per_s"] = row
    return result


def gemm_rates(shapes: list[str]) -> dict:
    """GFLOP/s of large square matmuls (the peak MFU divides by) and of each model's own matmuls."""
    rates = {"peak_square": round(measure_peak_flops(seconds=1.0) / 1e9, 1)}
    for shape in shapes:
        for name, mkn in model_gemm_shapes(emomoe_config(shape, "olmoe"), BATCH * SEQ_LEN).items():
            rates[f"{shape}/{name}{list(mkn)}"] = round(matmul_flops_per_s(*mkn, seconds=0.2) / 1e9, 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="coarse shape, OLMoE only, 2 repetitions, no generation")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--workloads", nargs="+", default=["train", "forward", "generate"],
                        choices=["train", "forward", "generate"])
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
            result[f"{shape}/{family}"] = compare(shape, family, args.reps, args.workloads, tuple(args.gen))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
