"""Selective expert use on the demo model: `select` wall time per method, checkpoint bytes, load times.

Calibration windows are random tokens: the cost of selection does not depend on what the text
says. Times are wall-clock seconds on a shared machine, so compare them within one run (the
full/subset load times are measured side by side). Prints one JSON object.

    python bench/selection.py                          # the `small` preset, 64 windows of 256 tokens
    python bench/selection.py --quick                  # 4 windows of 64 tokens
    python bench/selection.py --checkpoint runs/demo/emo/final
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from timing import SECONDS, ratio  # bench/ is the script's folder, so it is on sys.path

from emomoe.checkpoint import WEIGHTS_FILE, load_config, load_model, save_model
from emomoe.model import ModelConfig, build_model
from emomoe.select.calibration import Calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import SelectMethod
from emomoe.select.subset import select_subset


def _calibration(vocab_size: int, num_windows: int, seq_len: int, batch_size: int) -> Calibration:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, num_windows, batch_size):
        ids_BS = torch.randint(0, vocab_size, (min(batch_size, num_windows - start), seq_len), generator=gen)
        batches.append({"input_ids_BS": ids_BS, "doc_ids_BS": torch.zeros_like(ids_BS)})
    info = {"source": "random tokens", "num_windows": num_windows, "num_tokens": num_windows * seq_len, "seq_len": seq_len}
    return Calibration(batches, info)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 calibration windows of 64 tokens")
    parser.add_argument("--checkpoint", help="a model checkpoint (default: the `small` preset, random weights)")
    parser.add_argument("--keep", default="0.25", help="routed experts kept per layer (default 0.25)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    num_windows, seq_len = (4, 64) if args.quick else (64, 256)
    with tempfile.TemporaryDirectory() as tmp:
        full_dir = Path(args.checkpoint) if args.checkpoint else Path(tmp) / "full"
        if not args.checkpoint:
            torch.manual_seed(0)
            cfg = ModelConfig.preset("small")
            save_model(full_dir, build_model(cfg), cfg)
        cfg = load_config(full_dir)
        calib = _calibration(cfg.vocab_size, num_windows, min(seq_len, cfg.max_seq_len), batch_size=16)
        select_s = {}
        for method in SelectMethod:
            out = Path(tmp) / f"sub-{method}"
            select_s[str(method)] = round(_seconds(lambda: select_subset(
                full_dir, out, keep=KeepSpec.parse(args.keep), method=method, calibration=calib
            )), 3)
        subset_dir = Path(tmp) / f"sub-{SelectMethod.LAYERWISE}"
        load_full_s = _seconds(lambda: load_model(full_dir))
        load_subset_s = _seconds(lambda: load_model(subset_dir))
        print(json.dumps({
            "model": str(args.checkpoint or "preset small (random weights)"),
            "keep": args.keep,
            "calibration_windows": num_windows,
            "calibration_seq_len": calib.info["seq_len"],
            "select_wall_s": select_s,
            "full_bytes": (full_dir / WEIGHTS_FILE).stat().st_size,
            "subset_bytes": (subset_dir / WEIGHTS_FILE).stat().st_size,
            "full_params": cfg.num_params()[0],
            "subset_params": load_config(subset_dir).num_params()[0],
            "load_full_s": round(load_full_s, 4),
            "load_subset_s": round(load_subset_s, 4),
            **ratio({"load_subset": load_subset_s, "load_full": load_full_s}, "load_subset", "load_full", SECONDS),
        }))


if __name__ == "__main__":
    main()
