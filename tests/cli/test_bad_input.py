"""Bad input through `emomoe.cli.main`: one line on stderr, exit 2, no traceback, nothing half-written.

Each case id is cited by a row of docs/errors.md (tests/test_errors_doc.py checks that every row
names a test that exists). Warnings exit 0 and say what they saw.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from emomoe.checkpoint import load_model, save_model
from emomoe.cli import main
from emomoe.data.store import TokenStore
from emomoe.model import ModelConfig, build_model
from emomoe.train.config import RunConfig
from emomoe.train.shard_files import shard_file
from emomoe.train.trainer import train
from tests.fixtures import build_store, damage, fill_disk, sharded_checkpoint, small_tmpfs, word_documents

ASSETS = Path(__file__).resolve().parents[1] / "assets"
STORE = ASSETS / "store"


def tiny_run(store: Path, **train_overrides) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"preset": "tiny"},
        "data": {"store": str(store), "seq_len": 64, "batch_size": 2},
        "train": {"max_steps": 2, "warmup_steps": 1, "num_eval_windows": 1, "tensorboard": False, "num_threads": 1,
                  **train_overrides},
    })


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Read-only inputs: a trained tiny model on the shipped store, a subset of it, another store
    with a different tokenizer of the same size, a model whose vocabulary is too small, and a
    sharded training checkpoint (as FSDP writes them) of the trained model."""
    root = tmp_path_factory.mktemp("env")
    run = root / "run"
    train(tiny_run(STORE, checkpoint_every=1), run, progress=False)
    model = run / "final"
    subset = root / "subset"
    assert main(["select", "--checkpoint", str(model), "--data", str(STORE), "--calib", "code", "--keep", "0.5",
                 "--num-calib-windows", "8", "--out", str(subset), "--no-progress"]) == 0
    docs = word_documents({"code": "def if for in x y return".split(), "legal": "shall license grant".split(),
                           "literature": "she said the house".split()}, 12, num_words=(30, 60))
    other = build_store(docs, root / "other", vocab_size=300, val_fraction=0.2)
    small_cfg = ModelConfig.preset("tiny").with_overrides(["vocab_size=300", "max_seq_len=64"])
    small = save_model(root / "small-vocab", build_model(small_cfg), small_cfg)
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"preset": "tiny"}, "data": {"store": str(STORE), "seq_len": 64, "batch_size": 2},
        "train": {"max_steps": 1, "tensorboard": False, "num_threads": 1, "num_eval_windows": 1},
    }))
    sharded = sharded_checkpoint(root / "fsdp-run", *load_model(model))
    return {"root": root, "run": run, "model": model, "subset": subset, "other": other, "small": small,
            "config": config, "sharded": sharded}


def damaged_copy(source: Path, dest: Path, files: str | list[str], how: str) -> Path:
    shutil.copytree(source, dest)
    for file in [files] if isinstance(files, str) else files:
        damage(dest / file, how)
    return dest


def s(path: Path) -> str:
    return str(path)


def selections_in(out: Path) -> Path:
    """`out` holding only a selections folder, as an earlier sweep of other models leaves it."""
    (out / "selections" / "other").mkdir(parents=True)
    (out / "selections" / "other" / "code.json").write_text("{}")
    return out


def select_argv(checkpoint: str, keep: str, tmp_path: Path) -> list[str]:
    """`select` on the shipped store's code domain into a fresh folder."""
    return ["select", "--checkpoint", checkpoint, "--data", s(STORE), "--calib", "code", "--keep", keep,
            "--out", s(tmp_path / "sub")]


# Each case: (argv builder, regex the one-line message must match). Builders get (env, tmp_path).
ERRORS = {
    "train-missing-config": (
        lambda e, t: ["train", "--config", s(t / "nope.yaml"), "--out", s(t / "r")],
        r"nope\.yaml: config file not found \(shipped configs, usable by name: demo-anneal, demo-emo, ",
    ),
    "train-unknown-key": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(t / "r"), "--set", "train.max_stepz=3"],
        r"unknown config key 'train.max_stepz' in override",
    ),
    "train-nan-lr": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(t / "r"), "--set", "train.lr=.nan"],
        r"run\.yaml: train\.lr: expected a finite number, got nan$",
    ),
    "train-lb-window-zero": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(t / "r"), "--set", "model.moe.router.lb_window=0"],
        r"run\.yaml: model\.moe\.router\.lb_window: expected an integer >= 1, got 0$",
    ),
    "train-all-problems-at-once": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(t / "r"), "--set", "train.max_steps=-1",
                      "--set", "train.warmup_steps=-2", "--set", "data.batch_size=0"],
        r"data\.batch_size: expected an integer >= 1, got 0; train\.max_steps: expected an integer >= 1, "
        r"got -1; train\.warmup_steps: expected an integer >= 0, got -2$",
    ),
    "train-out-is-a-file": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(e["config"])],
        r"run\.yaml: is a file; expected a directory",
    ),
    "train-out-below-a-file": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(e["config"] / "run")],
        r"run\.yaml/run: cannot be created, .*run\.yaml is a file$",
    ),
    "train-existing-run": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(e["run"])],
        r"already holds a run \(config\.yaml\); pass --resume to continue it or --force",
    ),
    "train-vocab-too-small": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(t / "r"), "--set", "model.vocab_size=300"],
        r"model\.vocab_size: 300 is smaller than the token store's vocabulary \(512 in ",
    ),
    "train-store-of-another-tokenizer": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(t / "r"), "--set", f"data.store={e['other']}",
                      "--set", f"model.tokenizer_hash='{TokenStore.open(STORE).tokenizer_hash}'"],
        r"model\.tokenizer_hash: [0-9a-f]{12} differs from the tokenizer of .*other \([0-9a-f]{12}\)$",
    ),
    "train-resume-changed-model": (
        lambda e, t: ["train", "--out", s(e["run"]), "--resume", "--set", "model.d_model=64"],
        r"cannot resume, the config differs from the stored run at 'model\.d_model' "
        r"\(only train\.\* and data\.batch_size may change",
    ),
    "train-resume-other-global-batch": (
        lambda e, t: ["train", "--out", s(e["run"]), "--resume", "--set", "data.batch_size=4"],
        r"data\.batch_size: the checkpoint's micro-batches hold 2 sequences over all processes, this run's 4 "
        r"\(1 x 4\); set data\.batch_size=2$",
    ),
    "train-missing-mix-file": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(t / "r"), "--set", "data.store=mix.yaml"],
        r"mix\.yaml: mix file not found \(a YAML list of token arrays per domain: see docs/data\.md\)$",
    ),
    "train-resume-no-intact-checkpoint": (
        lambda e, t: ["train", "--out", s(damaged_copy(e["run"], t / "run", [f"checkpoints/step-0000000{i}/model.safetensors"
                                                        for i in (1, 2)], "truncate")), "--resume", "--set", "train.max_steps=3"],
        r"checkpoints: no intact checkpoint to resume from \(.*step-00000002/model\.safetensors: checksum mismatch",
    ),
    "tokenizer-unsupported-input": (
        lambda e, t: ["tokenizer", "train", "--input", s(ASSETS / "mix.yaml"), "--vocab-size", "100", "--out", s(t / "tok")],
        r"mix\.yaml: unsupported input format",
    ),
    "tokenizer-vocab-under-257": (
        lambda e, t: ["tokenizer", "train", "--input", s(e["corpus"]), "--vocab-size", "100", "--out", s(t / "tok")],
        r"vocab size 100 is too small: byte-level BPE needs at least 257$",
    ),
    "tokenize-missing-input": (
        lambda e, t: ["tokenize", "--input", s(t / "none.jsonl"), "--tokenizer", s(STORE / "tokenizer"), "--out", s(t / "st")],
        r"none\.jsonl: input not found$",
    ),
    "tokenize-existing-output": (
        lambda e, t: ["tokenize", "--input", s(e["corpus"]), "--tokenizer", s(STORE / "tokenizer"), "--out", s(e["other"])],
        r"other: already exists \(pass --force, or force=True, to replace it\)$",
    ),
    "tokenize-truncated-zst": (
        lambda e, t: ["tokenize", "--input", s(e["truncated_zst"]), "--tokenizer", s(STORE / "tokenizer"), "--out", s(t / "st")],
        r"cut\.jsonl\.zst: zstd stream ends mid-frame; the file is truncated$",
    ),
    "eval-other-tokenizer": (
        lambda e, t: ["eval", "--checkpoint", s(e["model"]), "--data", s(e["other"])],
        r"final: the model was trained with tokenizer [0-9a-f]{12}, the data was made with [0-9a-f]{12}; results "
        r"would be meaningless \(pass --any-tokenizer / any_tokenizer=True to go ahead\)$",
    ),
    "eval-existing-out": (
        lambda e, t: ["eval", "--checkpoint", s(e["model"]), "--data", s(STORE), "--out", s(e["config"])],
        r"run\.yaml: already exists \(pass --force, or force=True, to replace it\)$",
    ),
    "eval-out-below-a-file": (
        lambda e, t: ["eval", "--checkpoint", s(e["model"]), "--data", s(STORE), "--out", s(e["config"] / "x.json")],
        r"run\.yaml: is a file; expected a directory",
    ),
    "eval-truncated-weights": (
        lambda e, t: ["eval", "--checkpoint", s(damaged_copy(e["model"], t / "m", "model.safetensors", "truncate")),
                      "--data", s(STORE)],
        r"m/model\.safetensors: checksum mismatch: the file was truncated or altered since it was written, or its "
        r"line in checksums\.sha256 was$",
    ),
    "eval-flipped-byte-in-config": (
        lambda e, t: ["eval", "--checkpoint", s(damaged_copy(e["model"], t / "m", "model.yaml", "flip")), "--data", s(STORE)],
        r"m/model\.yaml: checksum mismatch",
    ),
    "eval-seq-len-too-long": (
        lambda e, t: ["eval", "--checkpoint", s(e["model"]), "--data", s(STORE), "--seq-len", "4096"],
        r"seq_len: 4096 exceeds .*final's max_seq_len 128$",
    ),
    "eval-two-selections-without-auto": (
        lambda e, t: ["eval", "--checkpoint", s(e["model"]), "--data", s(STORE), "--selection", s(e["subset"]),
                      s(e["random"])],
        r"selection: 2 files; give one, or 'auto' first to choose among them per prompt$",
    ),
    "eval-selection-of-another-model": (
        lambda e, t: ["eval", "--checkpoint", s(e["subset"]), "--data", s(STORE), "--selection", s(e["subset"])],
        r"subset/selection\.json: was made for another model \(source fingerprint [0-9a-f]{12}\.\.\., from "
        r".*final\), not .*subset \([0-9a-f]{12}\.\.\.\)$",
    ),
    "generate-auto-without-profile": (
        lambda e, t: ["generate", "--checkpoint", s(e["model"]), "--prompt", "def", "--selection", "auto",
                      s(e["subset"]), s(e["random"])],
        r"random/selection\.json: has no router_profile \(random selections and those made with "
        r"--no-router-profile have none\), which --selection auto compares prompts with; select it again",
    ),
    "select-vocab-larger-than-model": (
        lambda e, t: select_argv(s(e["small"]), "2", t),
        r"small-vocab: the data's vocabulary \(512\) is larger than the model's \(300\)$",
    ),
    "select-other-tokenizer": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--data", s(e["other"]), "--calib", "code", "--keep", "2",
                      "--out", s(t / "sub")],
        r"the model was trained with tokenizer [0-9a-f]{12}, the data was made with",
    ),
    "select-text-with-other-tokenizer": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--calib", s(e["corpus"]), "--tokenizer",
                      s(e["other"] / "tokenizer"), "--keep", "2", "--out", s(t / "sub")],
        r"the model was trained with tokenizer [0-9a-f]{12}, the data was made with",
    ),
    "select-tiny-calibration": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--calib", s(e["six_tokens"]), "--tokenizer",
                      s(STORE / "tokenizer"), "--keep", "2", "--out", s(t / "sub")],
        r"calibration data .*six\.jsonl: \d+ tokens, fewer than the minimum of 64 needed to rank experts$",
    ),
    "select-truncated-zst-calibration": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--calib", s(e["truncated_zst"]), "--tokenizer",
                      s(STORE / "tokenizer"), "--keep", "2", "--num-calib-windows", "10000", "--out", s(t / "sub")],
        r"cut\.jsonl\.zst: zstd stream ends mid-frame; the file is truncated$",
    ),
    "select-existing-out": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--data", s(STORE), "--calib", "code", "--keep", "2",
                      "--out", s(e["subset"])],
        r"subset: already exists \(pass --force, or force=True, to replace it\)$",
    ),
    "select-garbled-weights": (
        lambda e, t: ["select", "--checkpoint", s(damaged_copy(e["model"], t / "m", "model.safetensors", "flip")),
                      "--data", s(STORE), "--calib", "code", "--keep", "2", "--out", s(t / "sub")],
        r"m/model\.safetensors: checksum mismatch",
    ),
    "select-bad-keep": (
        lambda e, t: select_argv(s(e["model"]), "lots", t),
        r"keep 'lots': expected a count \(8\), a fraction \(0\.25\) or per-layer counts \(8,8,4,4\)$",
    ),
    "select-budget-below-the-smallest-subset": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--data", s(STORE), "--calib", "code", "--budget-gb",
                      "0.00001", "--out", s(t / "sub")],
        r"budget_gb 1e-05: the smallest subset \(the top-k routed experts in every layer, the shared experts and "
        r"everything outside the experts\) takes 0\.2 MB \(238,976 bytes\)$",
    ),
    "select-keep-and-budget": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--data", s(STORE), "--calib", "code", "--keep", "2",
                      "--budget-gb", "1", "--out", s(t / "sub")],
        r"keep and budget_gb: give one of them$",
    ),
    "finetune-negative-lr": (
        lambda e, t: ["finetune", "--checkpoint", s(e["subset"]), "--data", s(STORE), "--lr", "-1", "--out", s(t / "ft")],
        r"error: lr: expected a number > 0, got -1\.0$",
    ),
    "finetune-other-tokenizer": (
        lambda e, t: ["finetune", "--checkpoint", s(e["subset"]), "--data", s(e["other"]), "--out", s(t / "ft")],
        r"the model was trained with tokenizer [0-9a-f]{12}, the data was made with",
    ),
    "sweep-keep-1-is-ambiguous": (
        lambda e, t: ["sweep", "--checkpoints", s(e["model"]), "--data", s(STORE), "--keep", "1,0.5", "--out", s(t / "sw")],
        r"--keep 1,0\.5: sweep keeps fractions of the routed experts, spelled with a decimal point",
    ),
    "sweep-same-names": (
        lambda e, t: ["sweep", "--checkpoints", s(e["model"]), s(e["model"]), "--data", s(STORE), "--out", s(t / "sw")],
        r"--names: model names must differ, got run, run \(pass --names\)$",
    ),
    "sweep-out-holds-other-selections": (
        lambda e, t: ["sweep", "--checkpoints", s(e["model"]), "--data", s(STORE), "--keep", "0.5",
                      "--out", s(selections_in(t / "sw"))],
        r"sw/selections: already exists \(selection files of an earlier sweep\) \(pass --force",
    ),
    "sweep-out-is-a-file": (
        lambda e, t: ["sweep", "--checkpoints", s(e["model"]), "--data", s(STORE), "--out", s(e["config"])],
        r"run\.yaml: is a file; expected a directory",
    ),
    "consolidate-not-sharded": (
        lambda e, t: ["checkpoint", "consolidate", s(e["run"] / "checkpoints" / "step-00000002"), "--out", s(t / "out")],
        r"run/checkpoints/step-00000002: not a sharded training checkpoint \(no shards\.json\); checkpoints of "
        r"single-process and DDP runs are model checkpoints already$",
    ),
    "consolidate-flipped-byte-in-a-shard": (
        lambda e, t: ["checkpoint", "consolidate", s(damaged_copy(e["sharded"], t / "m", shard_file(0, 1), "flip")),
                      "--out", s(t / "out")],
        r"m/state-00000-of-00001\.safetensors: checksum mismatch: the file was truncated",
    ),
    "generate-other-tokenizer": (
        lambda e, t: ["generate", "--checkpoint", s(e["model"]), "--prompt", "def", "--tokenizer", s(e["other"] / "tokenizer")],
        r"other/tokenizer: the model was trained with tokenizer [0-9a-f]{12}, the tokenizer given is [0-9a-f]{12}; "
        r"results would be meaningless \(pass --any-tokenizer / any_tokenizer=True to go ahead\)$",
    ),
    "hf-export-other-tokenizer": (
        lambda e, t: ["hf", "export", "--checkpoint", s(e["model"]), "--tokenizer", s(e["other"]), "--out", s(t / "hf")],
        r"other/tokenizer/tokenizer\.json: the model was trained with tokenizer [0-9a-f]{12}, the tokenizer given is",
    ),
    "lm-eval-other-tokenizer": (
        lambda e, t: ["lm-eval", "--checkpoint", s(e["model"]), "--tokenizer", s(e["other"] / "tokenizer"), "--limit", "1"],
        r"other/tokenizer: the model was trained with tokenizer [0-9a-f]{12}, the tokenizer given is",
    ),
    "lm-eval-data-of-other-tokenizer": (
        lambda e, t: ["lm-eval", "--checkpoint", s(e["model"]), "--data", s(e["other"]), "--limit", "1"],
        r"final: the model was trained with tokenizer [0-9a-f]{12}, the data was made with [0-9a-f]{12}; ",
    ),
    "analyze-other-tokenizer": (
        lambda e, t: ["analyze", "--checkpoints", s(e["model"]), "--data", s(e["other"]), "--out", s(t / "a")],
        r"final: the model was trained with tokenizer [0-9a-f]{12}, the data was made with [0-9a-f]{12}; ",
    ),
    "generate-prompts-is-a-folder": (
        lambda e, t: ["generate", "--checkpoint", s(e["model"]), "--prompts", s(e["results"])],
        r"results: is a folder; expected a prompt file$",
    ),
    "generate-out-is-a-folder": (
        lambda e, t: ["generate", "--checkpoint", s(e["model"]), "--prompts", s(e["prompts"]), "--out", s(e["results"])],
        r"results: is a folder; expected a file name \(a folder is never replaced by a file\)$",
    ),
    "generate-existing-out": (
        lambda e, t: ["generate", "--checkpoint", s(e["model"]), "--prompts", s(e["prompts"]), "--out", s(e["config"])],
        r"run\.yaml: already exists \(pass --force, or force=True, to replace it\)$",
    ),
    "lm-eval-existing-out": (
        lambda e, t: ["lm-eval", "--checkpoint", s(e["model"]), "--out", s(e["config"])],
        r"run\.yaml: already exists \(pass --force, or force=True, to replace it\)$",
    ),
    "lm-eval-out-is-a-folder": (
        lambda e, t: ["lm-eval", "--checkpoint", s(e["model"]), "--out", s(e["results"]), "--force"],
        r"results: is a folder; expected a file name",
    ),
    "eval-out-is-a-folder-even-with-force": (
        lambda e, t: ["eval", "--checkpoint", s(e["model"]), "--data", s(STORE), "--out", s(e["results"]), "--force"],
        r"results: is a folder; expected a file name \(a folder is never replaced by a file\)$",
    ),
    "analyze-force-into-a-users-folder": (
        lambda e, t: ["analyze", "--checkpoints", s(e["model"]), "--data", s(STORE), "--out", s(e["results"]), "--force"],
        r"results: is a folder emomoe did not write \(no \.emomoe-output inside\), so it is never replaced; "
        r"choose another output, or move it away yourself$",
    ),
    "tokenizer-force-into-a-users-folder": (
        lambda e, t: ["tokenizer", "train", "--input", s(e["corpus"]), "--out", s(e["results"]), "--force"],
        r"results: is a folder emomoe did not write",
    ),
    "train-out-with-its-own-final": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", s(e["own_final"])],
        r"own-final: holds final but no run \(config\.yaml\), and a run would replace it; choose another --out",
    ),
    "train-out-in-proc": (
        lambda e, t: ["train", "--config", s(e["config"]), "--out", "/proc/emomoe-run"],
        r"^emomoe train: error: /proc/emomoe-run: cannot be written, nothing can be created in /proc",
    ),
    "train-empty-config": (
        lambda e, t: ["train", "--config", s(e["empty_yaml"]), "--out", s(t / "r")],
        r"no token store given \(set data\.store, or pass --data STORE\)$",
    ),
    "train-empty-store-override": (
        lambda e, t: ["train", "--config", s(e["config"]), "--set", "data.store=", "--out", s(t / "r")],
        r"no token store given \(set data\.store, or pass --data STORE\)$",
    ),
    "train-key-given-twice": (
        lambda e, t: ["train", "--config", s(e["twice_yaml"]), "--out", s(t / "r")],
        r"twice\.yaml: line 3: key 'train' given twice \(first on line 2\); give each key once$",
    ),
    "train-binary-config": (
        lambda e, t: ["train", "--config", s(e["binary"]), "--out", s(t / "r")],
        r"blob\.bin: not a config file: byte 0 is not UTF-8 text \(a binary file\?\)$",
    ),
    "select-binary-selection": (
        lambda e, t: ["select", "--checkpoint", s(e["model"]), "--selection", s(e["binary"]), "--out", s(t / "sub")],
        r"blob\.bin: not a selection file: byte 0 is not UTF-8 text",
    ),
    "finetune-binary-pairs": (
        lambda e, t: ["finetune", "--checkpoint", s(e["subset"]), "--data", s(STORE), "--pairs", s(e["binary"]),
                      "--out", s(t / "ft")],
        r"blob\.bin:1: not UTF-8 text \(byte 0 of the line\)$",
    ),
    "tokenizer-negative-min-frequency": (
        lambda e, t: ["tokenizer", "train", "--input", s(e["corpus"]), "--min-frequency", "-3", "--out", s(t / "tok")],
        r"min_frequency: expected an integer >= 0, got -3$",
    ),
    "tokenize-negative-chunk-mb": (
        lambda e, t: ["tokenize", "--input", s(e["corpus"]), "--tokenizer", s(STORE / "tokenizer"), "--chunk-mb", "-5",
                      "--out", s(t / "st")],
        r"chunk_mb: expected a number > 0, got -5\.0$",
    ),
    "select-keep-above-1": (
        lambda e, t: select_argv(s(e["model"]), "1.5", t),
        r"keep fraction 1\.5: expected a value in \(0, 1\]$",
    ),
    "lm-eval-limit-zero": (
        lambda e, t: ["lm-eval", "--checkpoint", s(e["model"]), "--limit", "0"],
        r"limit: expected a number of items > 0, got 0\.0$",
    ),
    "lm-eval-limit-negative": (
        lambda e, t: ["lm-eval", "--checkpoint", s(e["model"]), "--limit", "-1"],
        r"limit: expected a number of items > 0, got -1\.0$",
    ),
    "finetune-batch-size-zero": (
        lambda e, t: ["finetune", "--checkpoint", s(e["subset"]), "--data", s(STORE), "--batch-size", "0",
                      "--out", s(t / "ft")],
        r"batch_size: expected an integer >= 1, got 0$",
    ),
    "merge-damaged-full": (
        lambda e, t: ["merge", "--full", s(damaged_copy(e["model"], t / "m", "model.safetensors", "flip")),
                      "--subset", s(e["subset"]), "--out", s(t / "merged")],
        r"m/model\.safetensors: checksum mismatch: the file was truncated or altered",
    ),
    "plan-does-not-fit": (
        lambda e, t: ["plan", "--config", "emo-1b14b", "--gpus", "128", "--set", "train.activation_checkpointing=false"],
        r"^emomoe plan: error: \d+\.\d\d GB per GPU exceeds the 80\.00 GB of a GPU: the activations of a micro-batch "
        r"of 4 x 4096 tokens \(\d+\.\d\d GB\) do not fit in the \d+\.\d\d GB left after the model state; ",
    ),
    "plan-state-does-not-fit": (
        lambda e, t: ["plan", "--config", "emo-1b14b", "--gpus", "8", "--set", "train.parallelism=ddp"],
        r"the model state alone takes \d+\.\d\d GB per GPU \(ddp on 8 GPUs: parameters .*\); use fsdp "
        r"\(train\.parallelism\) to shard it$",
    ),
    "plan-bad-gpu-memory": (
        lambda e, t: ["plan", "--config", "emo-1b14b", "--gpu-memory", "lots"],
        r"^emomoe plan: error: gpu_memory: 'lots': expected a size like 5GB, 500MB or 2GiB$",
    ),
    "merge-other-source": (
        lambda e, t: ["merge", "--full", s(e["small"]), "--subset", s(e["subset"]), "--out", s(t / "merged")],
        r"subset: was selected from a different checkpoint than .*small-vocab \(weights sha256 differ; pass "
        r"--any-source to merge anyway\)$",
    ),
}


@pytest.fixture(scope="module")
def inputs(env):
    root = env["root"]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"def f{i}(x): return x + {i}  # a line of code " * 4,
                                          "domain": "code"}) + "\n" for i in range(30)))
    six = root / "six.jsonl"
    six.write_text(json.dumps({"text": "hello there"}) + "\n")
    import zstandard

    data = zstandard.ZstdCompressor().compress(corpus.read_bytes())
    cut = root / "cut.jsonl.zst"
    cut.write_bytes(data[: len(data) // 2])
    random = root / "random"
    assert main(["select", "--checkpoint", str(env["model"]), "--method", "random", "--keep", "0.5", "--out",
                 str(random)]) == 0
    results = root / "results"  # a user's folder: no verb may delete it
    results.mkdir()
    for i in range(11):
        (results / f"{i}.json").write_text("{}")
    own_final = root / "own-final"
    (own_final / "final").mkdir(parents=True)
    (own_final / "final" / "weights.bin").write_text("mine")
    prompts = root / "prompts.txt"
    prompts.write_text("def\nclass\n")
    empty_yaml = root / "empty.yaml"
    empty_yaml.write_text("")
    twice_yaml = root / "twice.yaml"
    twice_yaml.write_text(f"data: {{store: {STORE}}}\ntrain: {{max_steps: 1}}\ntrain: {{max_steps: 2}}\n")
    binary = root / "blob.bin"
    binary.write_bytes(bytes(range(255, -1, -1)) * 4)
    return {**env, "corpus": corpus, "six_tokens": six, "truncated_zst": cut, "random": random, "results": results,
            "own_final": own_final, "prompts": prompts, "empty_yaml": empty_yaml, "twice_yaml": twice_yaml,
            "binary": binary}


@pytest.mark.slow
@pytest.mark.parametrize("case", ERRORS)
def test_bad_input_is_one_line_and_writes_nothing(case, inputs, tmp_path, capsys):
    build, pattern = ERRORS[case]
    argv = build(inputs, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err
    added = sorted(set(p.name for p in tmp_path.iterdir()) - set(before))
    assert added in ([], ["run"], ["m"]), added  # only the damaged copies this test made itself
    assert not list(tmp_path.rglob("*.tmp"))
    assert len(list(inputs["results"].iterdir())) == 11 and (inputs["own_final"] / "final" / "weights.bin").is_file()


@pytest.mark.slow
def test_override_repairs_a_file_that_fails_alone(inputs, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(inputs["config"].read_text().replace("max_steps: 1", "max_steps: -5"))
    assert main(["train", "--config", str(broken), "--dry-run"]) == 2
    assert main(["train", "--config", str(broken), "--dry-run", "--set", "train.max_steps=3"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["max_steps"] == 3 and resolved["model"]["d_model"] == 32  # the preset, expanded


@pytest.mark.slow
def test_any_tokenizer_overrides_the_check(inputs, tmp_path):
    assert main(["eval", "--checkpoint", str(inputs["model"]), "--data", str(inputs["other"]), "--any-tokenizer",
                 "--num-eval-windows", "1", "--out", str(tmp_path / "e.json"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["all"]["loss"] > 0


@pytest.mark.slow
def test_eval_out_through_a_symlink_keeps_the_link(inputs, tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert main(["eval", "--checkpoint", str(inputs["model"]), "--data", str(STORE), "--num-eval-windows", "1",
                 "--out", str(link), "--force", "--no-progress"]) == 0
    assert link.is_symlink() and "domains" in json.loads(real.read_text())


@pytest.mark.slow
def test_small_calibration_warns(inputs, tmp_path, capsys):
    torch.manual_seed(0)
    assert main(["select", "--checkpoint", str(inputs["model"]), "--calib", str(inputs["corpus"]), "--tokenizer",
                 str(STORE / "tokenizer"), "--keep", "2", "--num-calib-windows", "3", "--seq-len", "64",
                 "--out", str(tmp_path / "sub"), "--no-progress"]) == 0
    assert re.search(r"calibration data .*corpus\.jsonl: only 192 tokens; below 512", capsys.readouterr().err)


FULL_DISK = {
    "tokenize": lambda e, d: ["tokenize", "--input", s(e["corpus"]), "--tokenizer", s(STORE / "tokenizer"),
                              "--out", s(d / "store"), "--no-progress"],
    "eval": lambda e, d: ["eval", "--checkpoint", s(e["model"]), "--data", s(STORE), "--num-eval-windows", "1",
                          "--out", s(d / "eval.json"), "--no-progress"],
    "select": lambda e, d: ["select", "--checkpoint", s(e["model"]), "--data", s(STORE), "--calib", "code",
                            "--keep", "2", "--out", s(d / "sub"), "--no-progress"],
}


@pytest.mark.slow
@pytest.mark.parametrize("verb", FULL_DISK)
def test_a_full_disk_is_one_line(verb, inputs, tmp_path, capsys):
    disk = tmp_path / "disk"
    with small_tmpfs(disk, "64k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root); tests/test_io.py injects ENOSPC instead")
        fill_disk(disk)
        assert main(FULL_DISK[verb](inputs, disk)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        # select plans the subset's size and refuses up front; the others fail at the write.
        full = "cannot write: no space left" if verb != "select" else "the subset needs .* of free disk, only"
        assert re.search(rf"^emomoe {verb}: error: {re.escape(str(disk))}/[^ ]*: {full}", err), err
        assert ".tmp" not in err  # the message names the output, not a temporary
        assert not list(disk.rglob("*.tmp")) and not (disk / "eval.json").exists() and not (disk / "sub").exists()


@pytest.mark.slow
def test_resuming_a_run_already_past_max_steps_says_nothing_was_trained(inputs, tmp_path, capsys):
    run = shutil.copytree(inputs["run"], tmp_path / "run")
    assert main(["train", "--out", str(run), "--resume", "--set", "train.max_steps=1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing to train: the run is at step 2 and train.max_steps is 1 (raise train.max_steps "
                          "to train on)"), out


@pytest.mark.slow
def test_a_file_size_limit_at_a_checkpoint_is_one_line_like_a_full_disk(inputs, tmp_path, capsys):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))  # config.yaml fits, the weights do not
    try:
        code = main(["train", "--config", str(inputs["config"]), "--out", str(tmp_path / "r"), "--no-progress"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(r"step-00000001: cannot write: the file is larger than the file-size limit \(ulimit -f\); "
                     r"the previous version, if any, is unchanged$", err), err
    assert not list((tmp_path / "r").rglob("*.tmp")) and not (tmp_path / "r" / "checkpoints" / "step-00000001").exists()


def test_lm_eval_without_its_package_says_so_before_any_work(inputs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as after `pip install .` without extras
    assert main(["lm-eval", "--checkpoint", str(inputs["model"])]) == 2
    assert capsys.readouterr().err == (
        "emomoe lm-eval: error: emomoe lm-eval needs the 'lm_eval' package: pip install 'emomoe[eval]'\n"
    )
