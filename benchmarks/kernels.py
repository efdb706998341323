"""HSTU attention kernels on a GPU: correctness at real shapes, then speed.

    python benchmarks/kernels.py --out benchmarks/results

1. Ceilings measured in the same run: bf16 matmul (8192^3) and device copy.
2. Correctness: the Triton kernels against dense float32 PyTorch on fresh
   random inputs (bf16 and fp16, ragged batches, cached prefixes, block
   boundaries, MTGR masks, head dims 32..256).
3. Prefill at 2048-8192 tokens (head dim 128): TFLOP/s of the paged kernel,
   against the matmul ceiling, FlashAttention 3 softmax attention (shipped in
   vLLM) and a non-paged Triton SiLU attention, on the same shapes.
4. Decode: GB/s of the paged decode kernel against the copy ceiling, and
   FlashAttention 3 on the same shapes.
5. A returning user's new events over a cached history: the default key
   splits against one split.
Prints a table and writes it (markdown + JSON) with device, versions, date.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from attention_cases import make_case, relative_error  # noqa: E402
from vllm_mtgr.kernels.paged_triton import (  # noqa: E402
    PREFILL_SPLITS,
    _rab,
    _silu_half,
    hstu_attention_triton,
    key_splits,
)

HEADS = 8
HEAD_DIM = 128
PREFILL_TOKENS = 16384


def bench(fn, *args, **kwargs) -> float:
    """Median milliseconds of `fn(*args, **kwargs)` (warm-up, repetitions: ms)."""
    return do_bench(lambda: fn(*args, **kwargs), warmup=100, rep=400,
                    return_mode="median")  # fmt: skip


def ceilings() -> dict[str, float]:
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


def _out(case) -> torch.Tensor:
    return torch.full(
        (case.query.shape[0], case.query.shape[1], case.params.cache_head_size),
        float("nan"),
        dtype=case.query.dtype,
        device="cuda",
    )


def _run(case, out, max_query_len, **tuning):
    hstu_attention_triton(
        case.query, case.kv_cache, case.block_table, case.query_start_loc,
        case.seq_lens, case.pos_w, case.ts_w, case.params, out, max_query_len,
        **tuning,
    )  # fmt: skip


def correctness() -> list[dict]:
    cases = [
        ("prefill 8192", [8192], [8192], {}),
        ("ragged 2048/4096/1/333", [2048, 4096, 1, 333], [2048, 4096, 1, 333], {}),
        ("cached prefix 4096+1024", [5120, 3000], [1024, 17], {}),
        ("returning 1024+80 (key splits)", [1104, 1104], [80, 80], {}),
        ("block boundaries", [16, 32, 4095, 4097], [16, 1, 2048, 4097], {}),
        (
            "MTGR 1024 hist + 2048 cand",
            [3072, 3072],
            [3072, 2048],
            dict(context_ends=[256, 256], candidate_starts=[1024, 1024]),
        ),
        ("decode 64 x up to 8192", [random.randint(1, 8192) for _ in range(64)],
         [1] * 64, {}),
    ]  # fmt: skip
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for name, seq_lens, query_lens, masks in cases:
            seed = random.randrange(2**31)
            case = make_case(
                seq_lens, query_lens, heads=4, dqk=128, dv=128, dtype=dtype,
                device="cuda", generator=torch.Generator().manual_seed(seed), **masks,
            )  # fmt: skip
            out = _out(case)
            _run(case, out, max(query_lens))
            got = out[..., :128]
            error = relative_error(got, case.expected)
            rows.append(dict(case=name, dtype=str(dtype)[6:], seed=seed,
                             rel_error=error, unwritten=bool(got.isnan().any()),
                             ok=error < 2e-2 and not got.isnan().any()))  # fmt: skip
        for dqk in (32, 64, 256):
            seed = random.randrange(2**31)
            case = make_case(
                [1500, 700], [1500, 300], heads=2, dqk=dqk, dv=dqk, dtype=dtype,
                device="cuda", generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            out = _out(case)
            _run(case, out, 1500)
            error = relative_error(out[..., :dqk], case.expected)
            rows.append(dict(case=f"head dim {dqk}", dtype=str(dtype)[6:],
                             seed=seed, rel_error=error, unwritten=False,
                             ok=error < 2e-2))  # fmt: skip
    return rows


@triton.jit
def _jagged_silu_attention(
    Q, K, V, OUT, CU, POS_W, TS_W, TIMES, stride_t, stride_h, max_len, divisor,
    inv_normalizer, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Non-paged peer: contiguous K/V per sequence (as Meta's jagged kernel),
    with the same arithmetic as the paged kernel (`_rab`, `_silu_half`; the
    caller halves the bias tables)."""
    seq = tl.program_id(0)
    block = tl.program_id(1)
    head = tl.program_id(2)
    start = tl.load(CU + seq)
    length = tl.load(CU + seq + 1) - start
    if block * BLOCK_M >= length:
        return
    m = block * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < length
    d = tl.arange(0, D)
    rows_q = (start + m).to(tl.int64) * stride_t + head * stride_h
    q = tl.load(Q + rows_q[:, None] + d[None, :], mask=m_ok[:, None], other=0.0)
    q = q * 0.5
    row_offset = max_len - 1 - tl.where(m_ok, m, 0)
    time_q = tl.load(TIMES + start + m, mask=m_ok, other=0)
    high_q, low_q = (time_q >> 16).to(tl.float32), (time_q & 0xFFFF).to(tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for k_start in range(0, (block + 1) * BLOCK_M, BLOCK_N):
        n = k_start + tl.arange(0, BLOCK_N)
        n_ok = n < length
        rows_k = (start + n).to(tl.int64) * stride_t + head * stride_h
        k = tl.load(K + rows_k[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
        v = tl.load(V + rows_k[:, None] + d[None, :], mask=n_ok[:, None], other=0.0)
        time_k = tl.load(TIMES + start + n, mask=n_ok, other=0)
        high_k = (time_k >> 16).to(tl.float32)
        low_k = (time_k & 0xFFFF).to(tl.float32)
        a = tl.dot(q, tl.trans(k))
        a += _rab(n[None, :] + row_offset[:, None], high_q, low_q, high_k, low_k,
                  POS_W, TS_W, divisor, 128, True)  # fmt: skip
        p = _silu_half(a, v.dtype, True)
        p = tl.where((n[None, :] <= m[:, None]) & n_ok[None, :], p, 0.0)
        acc += tl.dot(p, v)
    acc = acc * inv_normalizer
    out = OUT + rows_q[:, None] + d[None, :]
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=m_ok[:, None])


def prefill_speed(matmul_tflops: float) -> list[dict]:
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    rows = []
    for length in (2048, 4096, 8192):
        batch = PREFILL_TOKENS // length
        for page in (16, 128):
            case = make_case(
                [length] * batch, [length] * batch, heads=HEADS, dqk=HEAD_DIM,
                dv=HEAD_DIM, block_size=page, dtype=torch.bfloat16, device="cuda",
                with_expected=False,
            )  # fmt: skip
            out = _out(case)
            ms = bench(_run, case, out, length)
            flops = 4 * HEADS * HEAD_DIM * batch * length * (length + 1) / 2
            rows.append(dict(kernel=f"vllm-mtgr paged (page {page})", length=length,
                             batch=batch, ms=ms, tflops=flops / ms / 1e9))  # fmt: skip
        tokens = batch * length
        q = torch.randn(tokens, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        k, v = torch.randn_like(q), torch.randn_like(q)
        cu = torch.arange(0, tokens + 1, length, device="cuda", dtype=torch.int32)
        times = torch.randint(0, 2**30, (tokens,), device="cuda", dtype=torch.int32)
        pos_w = 0.5 * torch.randn(2 * length - 1, device="cuda")
        ts_w = 0.5 * torch.randn(129, device="cuda")
        out = torch.empty_like(q)
        grid = (batch, triton.cdiv(length, 64), HEADS)
        ms = bench(
            _jagged_silu_attention[grid], q, k, v, out, cu, pos_w, ts_w, times,
            q.stride(0), q.stride(1), length, 0.301, 1.0 / length, D=HEAD_DIM,
            BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2,
        )  # fmt: skip
        rows.append(dict(kernel="Triton SiLU, non-paged", length=length, batch=batch,
                         ms=ms, tflops=flops / ms / 1e9))  # fmt: skip
        blocks = tokens // 16
        k_cache = torch.randn(blocks, 16, HEADS, HEAD_DIM, device="cuda",
                              dtype=torch.bfloat16)  # fmt: skip
        v_cache = torch.randn_like(k_cache)
        table = torch.arange(blocks, device="cuda", dtype=torch.int32).view(batch, -1)
        lens = torch.full((batch,), length, device="cuda", dtype=torch.int32)
        ms = bench(
            flash_attn_varlen_func, q, k_cache, v_cache, max_seqlen_q=length,
            cu_seqlens_q=cu, max_seqlen_k=length, seqused_k=lens, block_table=table,
            causal=True, softmax_scale=HEAD_DIM**-0.5, fa_version=3,
        )  # fmt: skip
        rows.append(dict(kernel="FlashAttention 3 softmax (page 16)", length=length,
                         batch=batch, ms=ms, tflops=flops / ms / 1e9))  # fmt: skip
    for row in rows:
        row["pct_matmul"] = 100 * row["tflops"] / matmul_tflops
    return rows


def decode_speed(copy_tbps: float) -> list[dict]:
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    rows = []
    heads = 16
    for batch, length in ((32, 4096), (128, 2048), (64, 8192)):
        case = make_case(
            [length] * batch, [1] * batch, heads=heads, dqk=HEAD_DIM, dv=HEAD_DIM,
            dtype=torch.bfloat16, device="cuda", with_expected=False,
        )  # fmt: skip
        out = _out(case)
        ms = bench(_run, case, out, 1)
        # Bytes the kernel must read: k, v and the key's time per cached token.
        needed = batch * length * heads * (2 * HEAD_DIM + 4) * 2
        rows.append(dict(kernel="vllm-mtgr paged decode", batch=batch, length=length,
                         ms=ms, tbps=needed / ms / 1e9))  # fmt: skip
        blocks = batch * length // 16
        k_cache = torch.randn(blocks, 16, heads, HEAD_DIM, device="cuda",
                              dtype=torch.bfloat16)  # fmt: skip
        v_cache = torch.randn_like(k_cache)
        q = torch.randn(batch, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        cu = torch.arange(0, batch + 1, device="cuda", dtype=torch.int32)
        table = torch.arange(blocks, device="cuda", dtype=torch.int32).view(batch, -1)
        lens = torch.full((batch,), length, device="cuda", dtype=torch.int32)
        ms = bench(
            flash_attn_varlen_func, q, k_cache, v_cache, max_seqlen_q=1,
            cu_seqlens_q=cu, max_seqlen_k=length, seqused_k=lens, block_table=table,
            causal=True, fa_version=3,
        )  # fmt: skip
        fa_bytes = batch * length * heads * 2 * HEAD_DIM * 2
        rows.append(dict(kernel="FlashAttention 3 decode", batch=batch, length=length,
                         ms=ms, tbps=fa_bytes / ms / 1e9))  # fmt: skip
    for row in rows:
        row["pct_copy"] = 100 * row["tbps"] / copy_tbps
    return rows


def returning_speed() -> list[dict]:
    """New events over a cached history of 1024, 16 heads (mtgr-8b's): the
    default key splits against one split (which walks every cached key in
    a handful of programs)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for batch, new in ((1, 16), (1, 80), (8, 80)):
        case = make_case(
            [1024 + new] * batch, [new] * batch, heads=16, dqk=HEAD_DIM,
            dv=HEAD_DIM, dtype=torch.bfloat16, device="cuda", with_expected=False,
        )  # fmt: skip
        out = _out(case)
        tiles = batch * new // 64 + batch  # the default BLOCK_M of 64
        default_ms = bench(_run, case, out, new)
        one_ms = bench(_run, case, out, new, num_splits=1)
        splits = key_splits(tiles * 16, sms, *PREFILL_SPLITS)
        rows.append(dict(batch=batch, new=new, cached=1024, splits=splits,
                         ms=default_ms, ms_one_split=one_ms,
                         speedup=one_ms / default_ms))  # fmt: skip
    return rows


PREFILL_CONFIGS = [(64, 64, 8, 2), (64, 64, 8, 3), (64, 64, 4, 2), (128, 64, 8, 2),
                   (128, 32, 8, 2), (64, 32, 4, 3), (64, 128, 8, 2),
                   (32, 64, 4, 2)]  # fmt: skip
DECODE_CONFIGS = [(64, 4, 2), (64, 4, 3), (128, 4, 3), (128, 8, 3), (32, 4, 4),
                  (64, 8, 4)]  # fmt: skip


def sweep() -> list[dict]:
    """Time every candidate tile configuration (prefill at 4096, decode)."""
    rows = []
    case = make_case([4096] * 4, [4096] * 4, heads=HEADS, dqk=HEAD_DIM, dv=HEAD_DIM,
                     dtype=torch.bfloat16, device="cuda",
                     with_expected=False)  # fmt: skip
    out = _out(case)
    flops = 4 * HEADS * HEAD_DIM * 4 * 4096 * 4097 / 2
    for config in PREFILL_CONFIGS:
        try:
            ms = bench(_run, case, out, 4096, prefill_config=config)
        except Exception as error:  # out of shared memory / registers
            rows.append(dict(kind="prefill", config=config, ms=float("nan"),
                             rate=str(error)[:40]))  # fmt: skip
            continue
        rows.append(dict(kind="prefill", config=config, ms=ms,
                         rate=f"{flops / ms / 1e9:.0f} TFLOP/s"))  # fmt: skip
    case = make_case([4096] * 32, [1] * 32, heads=16, dqk=HEAD_DIM, dv=HEAD_DIM,
                     dtype=torch.bfloat16, device="cuda",
                     with_expected=False)  # fmt: skip
    out = _out(case)
    needed = 32 * 4096 * 16 * (2 * HEAD_DIM + 4) * 2
    for config in DECODE_CONFIGS:
        for splits in (None, 4, 8):
            ms = bench(_run, case, out, 1, decode_config=config, num_splits=splits)
            rows.append(dict(kind=f"decode splits={splits}", config=config, ms=ms,
                             rate=f"{needed / ms / 1e9:.2f} TB/s"))  # fmt: skip
    return rows


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sweep", action="store_true", help="tune tile configs only")
    args = parser.parse_args()
    if args.sweep:
        print(_table(sweep(), ["kind", "config", "ms", "rate"]))
        return
    import vllm

    device = torch.cuda.get_device_name()
    header = (
        f"device: {device}; torch {torch.__version__}; triton {triton.__version__}; "
        f"vllm {vllm.__version__}; python {platform.python_version()}; "
        f"date {time.strftime('%Y-%m-%d')}"
    )
    limits = ceilings()
    checks = correctness()
    prefill = prefill_speed(limits["matmul_tflops"])
    decode = decode_speed(limits["copy_tbps"])
    returning = returning_speed()
    report = "\n\n".join([
        f"# HSTU attention kernels\n\n{header}",
        f"Ceilings: bf16 matmul {limits['matmul_tflops']:.0f} TFLOP/s, "
        f"device copy {limits['copy_tbps']:.2f} TB/s (read + write).",
        "## Correctness (relative error vs float32 PyTorch)\n\n"
        + _table(checks, ["case", "dtype", "rel_error", "unwritten", "ok", "seed"]),
        f"## Prefill, bf16, {HEADS} heads x {HEAD_DIM}, causal, "
        f"{PREFILL_TOKENS} tokens per batch\n\n"
        + _table(prefill, ["kernel", "length", "batch", "ms", "tflops", "pct_matmul"]),
        f"## Decode, bf16, 16 heads x {HEAD_DIM}\n\n"
        + _table(decode, ["kernel", "batch", "length", "ms", "tbps", "pct_copy"]),
        f"## Returning user: new events over 1024 cached, bf16, 16 heads x "
        f"{HEAD_DIM}\n\n" + _table(returning, list(returning[0])),
    ])  # fmt: skip
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"kernels-{device.replace(' ', '_')}-{time.strftime('%Y%m%d')}"
    (args.out / f"{stem}.md").write_text(report + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(
        dict(header=header, ceilings=limits, correctness=checks, prefill=prefill,
             decode=decode, returning=returning), indent=2))  # fmt: skip
    if not all(row["ok"] for row in checks):
        raise SystemExit("correctness check failed")


if __name__ == "__main__":
    main()
