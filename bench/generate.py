"""Generation speed: `emomoe.generate` (our KV cache) vs transformers' `generate` on the HF export of
the same model, greedy, interleaved in one process. Prints one JSON object.

    python bench/generate.py                                  # the demo architecture (`small`), random weights
    python bench/generate.py --checkpoint runs/demo/emo/final     # its tokenizer: from the run's store
    python bench/generate.py --quick

Both sides decode the same random prompts for exactly `new_tokens` tokens (no EOS stop) and must
produce the same tokens. Times are the best of interleaved repetitions (the two sides alternate,
so both see the same background load); tokens/s counts new tokens over all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from timing import TOKENS_PER_S, interleaved_best, ratio  # bench/ is the script's folder, so it is on sys.path

from emomoe.checkpoint import load_for_inference, save_model
from emomoe.data.tokenizer import train_tokenizer
from emomoe.generate import GenerationConfig, generate
from emomoe.hf.convert import export_hf
from emomoe.model import ModelConfig, build_model
from emomoe.train.provenance import find_tokenizer

TOKENIZER_TEXTS = ["the router sends each token to a few experts", "def f(x): return x + 1"] * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 new tokens, 2 repetitions")
    parser.add_argument("--checkpoint", help="a model checkpoint (default: the `small` preset, random weights)")
    parser.add_argument("--tokenizer", help="its tokenizer, for the export (default: found from the checkpoint)")
    parser.add_argument("--batch", type=int, default=1, help="prompts decoded together (default 1)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_flush_denormal(True)
    new_tokens, reps = (16, 2) if args.quick else (args.new_tokens, args.reps)
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, tokenizer = args.checkpoint, args.tokenizer
        if checkpoint is None:
            tok = train_tokenizer(TOKENIZER_TEXTS, vocab_size=300)
            tokenizer = tok.save(Path(tmp) / "tokenizer")
            cfg = ModelConfig.preset("small").with_overrides([f"eos_id={tok.eos_id}"])
            torch.manual_seed(0)
            checkpoint = save_model(Path(tmp) / "ours", build_model(cfg), cfg)
        export_hf(checkpoint, Path(tmp) / "hf", tokenizer=tokenizer or find_tokenizer(checkpoint))
        ours, cfg = load_for_inference(checkpoint)
        theirs = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", trust_remote_code=True, dtype=torch.float32)
        theirs.eval()
        gen = torch.Generator().manual_seed(0)
        prompts_BS = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_tokens), generator=gen)
        if cfg.eos_id is not None:  # no document boundary inside a prompt (the HF model does not mask them)
            prompts_BS[prompts_BS == cfg.eos_id] = (cfg.eos_id + 1) % cfg.vocab_size
        settings = GenerationConfig(max_new_tokens=new_tokens, greedy=True)
        outputs = {}

        def run_ours() -> None:
            outputs["emomoe"] = [c.tokens for c in generate(ours, prompts_BS.tolist(), settings)]

        def run_theirs() -> None:
            with torch.inference_mode():
                out_BS = theirs.generate(
                    prompts_BS, attention_mask=torch.ones_like(prompts_BS), do_sample=False, use_cache=True,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=cfg.eos_id,
                )
            outputs["transformers"] = out_BS[:, args.prompt_tokens :].tolist()

        best = interleaved_best({"emomoe": run_ours, "transformers": run_theirs}, reps=reps)
    rate = {name: args.batch * new_tokens / seconds for name, seconds in best.items()}
    print(json.dumps({
        "model": str(args.checkpoint or "preset small (random weights)"),
        "batch": args.batch,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
        "emomoe_tokens_per_s": round(rate["emomoe"], 1),
        "transformers_tokens_per_s": round(rate["transformers"], 1),
        **ratio(rate, "emomoe", "transformers", TOKENS_PER_S),
        "same_tokens": outputs["emomoe"] == outputs["transformers"],
    }))


if __name__ == "__main__":
    main()
