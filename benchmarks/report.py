"""Markdown tables for the benchmarks' reports (one format for all of them)."""

from __future__ import annotations


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """`rows` as a markdown table of `columns` (default: the first row's keys;
    a row without a column leaves its cell empty)."""
    columns = columns or list(rows[0])

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows
    ]
    return "\n".join(lines)
