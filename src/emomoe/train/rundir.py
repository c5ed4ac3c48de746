"""The run directory: what it holds, and the rule that a run is never overwritten by accident.

A directory holding `config.yaml` holds a run. Training into it again needs `resume` (continue
from the latest checkpoint; the model and data sections must be unchanged, the train section may
change, e.g. a larger max_steps, and so may data.batch_size, for resuming on another number of
processes: the data loader then checks that the global batch stays the same) or `force` (delete
that run's files and start over).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from emomoe.errors import ConfigError
from emomoe.io import check_output_dir, create_text
from emomoe.train.config import RunConfig

CONFIG_FILE = "config.yaml"
FINAL_DIR = "final"
RUN_ARTIFACTS = (CONFIG_FILE, "metrics.jsonl", "checkpoints", FINAL_DIR, "tensorboard")
RESUMABLE = ("train", "data.batch_size")
"""Sections and fields a resumed run may change; anything else would make the checkpoint describe
another run. (data.batch_size is per process: what must not change, processes x batch size, is
checked against the checkpoint when it loads.)"""


def holds_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / CONFIG_FILE).is_file()


def check_run_dir(run_dir: str | Path, cfg: RunConfig, *, resume: bool, force: bool) -> None:
    """Raise ConfigError if training `cfg` into `run_dir` would overwrite or misread another run."""
    run_dir = Path(run_dir)
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: continue the run or start it over")
    check_output_dir(run_dir)
    if not holds_run(run_dir):
        stray = [name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
        if stray:
            raise ConfigError(
                f"{run_dir}: holds {stray[0]} but no run ({CONFIG_FILE}), and a run would replace it; "
                "choose another --out, or move it away"
            )
        return
    if force:
        return
    if not resume:
        raise ConfigError(
            f"{run_dir} already holds a run ({CONFIG_FILE}); pass --resume to continue it "
            "or --force to delete it and start over"
        )
    stored, given = (_store_resolved(c) for c in (RunConfig.from_yaml(run_dir / CONFIG_FILE), cfg))
    difference = first_difference(stored, given, skip=RESUMABLE)
    if difference:
        raise ConfigError(
            f"{run_dir}: cannot resume, the config differs from the stored run at '{difference}' "
            "(only train.* and data.batch_size may change; use --force to start over)"
        )


def _store_resolved(cfg: RunConfig) -> dict[str, Any]:
    """The config as a dict, its token store as a resolved path: the store is the same wherever it is
    named from (and runs of older versions stored it as typed)."""
    data = cfg.to_dict()
    data["data"]["store"] = str(Path(cfg.data.store).resolve())
    return data


def claim_run_dir(run_dir: str | Path, cfg: RunConfig, *, force: bool, resume: bool = False) -> None:
    """After `check_run_dir`: clear a forced-over run and record `cfg` as RUN_DIR/config.yaml (main
    process only). A new run creates config.yaml exclusively: of two runs started into one
    directory at the same moment, one trains and the other stops here."""
    run_dir = Path(run_dir)
    if force:
        remove_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        cfg.to_yaml(run_dir / CONFIG_FILE)
    elif not create_text(run_dir / CONFIG_FILE, cfg.to_yaml()):
        raise ConfigError(f"{run_dir}: another run claimed this directory at the same moment; nothing was written")


def remove_run(run_dir: Path) -> None:
    """Delete the files a run wrote, and nothing else that may share the directory."""
    for name in RUN_ARTIFACTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def first_difference(a: Any, b: Any, skip: tuple[str, ...] = (), path: str = "") -> str | None:
    """Dotted path of the first field where two config dicts differ, ignoring the dotted paths in
    `skip` (whole sections or single fields)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            child = f"{path}.{key}" if path else key
            if child in skip:
                continue
            found = first_difference(a.get(key), b.get(key), skip, child)
            if found:
                return found
        return None
    return None if a == b else path
