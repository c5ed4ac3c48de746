"""`emomoe generate`: text from a checkpoint (full model or subset), streamed as it is produced."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from emomoe.checkpoint.selection import load_selections
from emomoe.cli._options import add_config_options, config_from_args
from emomoe.data.prompts import read_prompts
from emomoe.errors import ConfigError
from emomoe.generate import GenerateConfig, generate_text
from emomoe.io import atomic_write_text, check_output_file
from emomoe.train.provenance import load_with_tokenizer
from emomoe.train.runtime import setup_runtime

EXAMPLES = """examples:
  emomoe generate --checkpoint runs/demo/emo/final --prompt "def fibonacci(n):" --greedy
  emomoe generate --checkpoint subsets/emo-code --prompts prompts.jsonl --temperature 0.8 --top-p 0.9 --out out.jsonl
  emomoe generate --checkpoint runs/demo/emo/final --selection subsets/emo-code --prompt "import os" --greedy
  emomoe generate --checkpoint runs/demo/emo/final --selection auto sel/code.json sel/legal.json --prompts p.txt
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint or subset (KV cache, greedy or sampled, streamed)",
        description="Continue a prompt with a checkpoint's model: the text is streamed to stdout as it is "
        "produced. With --prompts, every prompt of the file is continued (in batches) and one JSON line "
        "per prompt is written: {prompt, completion, num_tokens, finish_reason}. Routing uses no document "
        "pool. With --selection, routing is restricted to a selection's experts (the sliced subset's "
        "output, without slicing); with --selection auto, each prompt runs with the selection its first "
        "tokens choose (printed to stderr, or a 'selection' field). The tokenizer is found next to the "
        "checkpoint, or in its run's token store.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model checkpoint or subset")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", metavar="TEXT", help="one prompt; its continuation is streamed to stdout")
    source.add_argument("--prompts", metavar="FILE", help="one prompt per line, or .jsonl with a 'prompt' field")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="tokenizer.json or its folder (default: found from the checkpoint)")
    p.add_argument("--out", metavar="FILE", help="with --prompts: write the JSON lines here instead of stdout")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_config_options(p, GenerateConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(GenerateConfig, args)
    if args.out and args.prompts is None:
        raise ConfigError("--out: only with --prompts (a single --prompt streams to stdout)")
    if args.out:
        check_output_file(args.out, args.force)
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    setup_runtime()
    model, _, tokenizer = load_with_tokenizer(args.checkpoint, args.tokenizer, any_tokenizer=cfg.any_tokenizer)
    selections = load_selections(args.checkpoint, model, cfg)
    if prompts is None:
        started = time.perf_counter()
        [done] = generate_text(
            model, tokenizer, [args.prompt], cfg, stop_strings=cfg.stop,
            on_text=lambda _, piece: print(piece, end="", flush=True), selections=selections,
        )
        seconds = time.perf_counter() - started
        print()
        rate = done.num_tokens / seconds
        chosen = f", selection {done.selection}" if done.selection else ""
        print(f"[{done.num_tokens} tokens, {done.finish_reason}{chosen}, {rate:.1f} tokens/s]", file=sys.stderr)
        return 0
    lines = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start : start + cfg.batch_size]
        completions = generate_text(model, tokenizer, batch, cfg, stop_strings=cfg.stop, selections=selections)
        for prompt, done in zip(batch, completions):
            record = {"prompt": prompt, "completion": done.text, "num_tokens": done.num_tokens,
                      "finish_reason": str(done.finish_reason)}
            if done.selection:
                record["selection"] = done.selection
            line = json.dumps(record, ensure_ascii=False)
            if args.out:
                lines.append(line)
            else:
                print(line, flush=True)
    if args.out:
        atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} completions to {args.out}", file=sys.stderr)
    return 0
