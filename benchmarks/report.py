"""Markdown tables for the benchmarks' reports (one format for all of them)."""

from __future__ import annotations

import torch


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


def ceilings() -> dict[str, float]:
    """The GPU's bf16 matmul (8192^3) TFLOP/s and device copy TB/s (read +
    write of 1 GiB), measured now: every benchmark's ratios need them."""
    from triton.testing import do_bench

    def bench(fn, *args) -> float:
        return do_bench(lambda: fn(*args), warmup=50, rep=200, return_mode="median")

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench(torch.matmul, a, b)
    src = torch.randn(256 * 2**20, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = bench(dst.copy_, src)
    return {
        "matmul_tflops": 2 * 8192**3 / ms / 1e9,
        "copy_tbps": 2 * src.numel() * 4 / copy_ms / 1e9,
    }
