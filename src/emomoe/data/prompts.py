"""Prompt files for batch generation: one prompt per line, or JSON lines with a "prompt" field."""

from __future__ import annotations

import json
from pathlib import Path

from emomoe.errors import DataError

PROMPT_FIELDS = ("prompt", "text")


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of `path`, in file order.

    `.jsonl`: every non-empty line is a JSON object with a string "prompt" (or "text") field, or a
    JSON string. Anything else: every non-empty line is one prompt, as written.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: prompts file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    jsonl = path.suffix == ".jsonl"
    prompts = [_parse(line, path, i) if jsonl else line for i, line in enumerate(lines, start=1) if line.strip()]
    if not prompts:
        raise DataError(f"{path}: holds no prompt")
    return prompts


def _parse(line: str, path: Path, line_no: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not JSON ({e.msg})") from None
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for field in PROMPT_FIELDS:
            if isinstance(record.get(field), str):
                return record[field]
    raise DataError(f"{path}:{line_no}: expected a JSON string or an object with a string 'prompt' or 'text' field")
