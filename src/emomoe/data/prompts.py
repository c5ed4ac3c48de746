"""Prompt files for batch generation: one prompt per line, or JSON lines with a "prompt" field."""

from __future__ import annotations

from pathlib import Path

from emomoe.errors import DataError
from emomoe.io import parse_json, read_text

PROMPT_FIELDS = ("prompt", "text")


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of `path`, in file order.

    `.jsonl`: every non-empty line is a JSON object with a string "prompt" (or "text") field, or a
    JSON string. Anything else: every non-empty line is one prompt, as written.
    """
    path = Path(path)
    lines = read_text(path, "prompt file").splitlines()
    jsonl = path.suffix == ".jsonl"
    prompts = [_parse(line, path, i) if jsonl else line for i, line in enumerate(lines, start=1) if line.strip()]
    if not prompts:
        raise DataError(f"{path}: holds no prompt")
    return prompts


def _parse(line: str, path: Path, line_no: int) -> str:
    record = parse_json(line, f"{path}:{line_no}")
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        for field in PROMPT_FIELDS:
            if isinstance(record.get(field), str):
                return record[field]
    raise DataError(f"{path}:{line_no}: expected a JSON string or an object with a string 'prompt' or 'text' field")
