"""Markdown tables: the one table writer every report uses."""

from __future__ import annotations


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header))] + [_row(r) for r in rows]
    return "\n".join(lines)
