"""HSTU attention kernels on a GPU: correctness at real shapes, then speed.

    python benchmarks/kernels.py --out benchmarks/results/h200-20261201
    python benchmarks/kernels.py --sections sweep --out DIR   # tile configurations

1. Ceilings measured in the same run: bf16 matmul (8192^3) and device copy.
2. Correctness: the Triton kernels against dense float32 PyTorch on fresh
   random inputs (bf16, fp16 for some; ragged batches, cached prefixes,
   block boundaries, KV blocks shorter than and as long as a key tile, MTGR
   masks, ranking candidates, head dims 64..256).
3. Prefill, causal, 32 sequences x 4 and x 8 heads of 128, lengths 1024 to
   8192, a ragged batch and the DLRMv3 peer shape (1024 history + 2048
   candidates): TFLOP/s of the kernel that serves the shape (`kernel`: on
   Hopper the Gluon one) and of the Triton kernel (`triton_tflops`, GPUs
   before Hopper), against the matmul ceiling and against FlashAttention 3
   softmax attention (shipped in vLLM) on the same shapes.
4. Decode: bandwidth of the paged decode kernel against the copy ceiling
   (bytes it reads and bytes it needs), FlashAttention 3 beside it, and the
   key-split choice measured: every split count at several batch shapes.
5. A returning user's new events over a cached history (the prefill kernel
   with few query rows).
Prints the tables and writes them (markdown + JSON) with device, versions,
date. FLOPs: 4 * heads * head_dim * visible (query, key) pairs.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import triton
from report import ceilings, markdown_table
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from attention_cases import (  # noqa: E402
    make_candidate_case,
    make_case,
    relative_error,
)

from vllm_mtgr.kernels import paged_gluon  # noqa: E402
from vllm_mtgr.kernels.paged_torch import kernel_bias_tables  # noqa: E402
from vllm_mtgr.kernels.paged_triton import (  # noqa: E402
    DECODE_SPLITS,
    _prefill_blocks,
    candidate_attention_triton,
    hstu_attention_triton,
    key_splits,
)

HEAD_DIM = 128
BATCH = 32
PAGE = 64  # KV block size of these runs (vllm-mtgr serves retrieval with 64)
RANKING_PAGE = 256  # and ranking models with 256: correctness only
DLRMV3 = (1024, 2048)  # history, candidates per user


def bench(fn, *args, **kwargs) -> float:
    """Median milliseconds of `fn(*args, **kwargs)` (warm-up, repetitions: ms)."""
    return do_bench(lambda: fn(*args, **kwargs), warmup=50, rep=200,
                    return_mode="median")  # fmt: skip


class Prefill:
    """A paged case with its output buffer and kernel tables, ready to run."""

    def __init__(self, case, **tuning) -> None:
        self.case = case
        self.tables = kernel_bias_tables(case.pos_w, case.ts_w)
        self.out = torch.full(
            (*case.query.shape[:2], case.params.cache_head_size), float("nan"),
            dtype=case.query.dtype, device=case.query.device,
        )  # fmt: skip
        self.max_query_len = int(
            (case.query_start_loc[1:] - case.query_start_loc[:-1]).max()
        )
        self.tuning = tuning

    def __call__(self, **tuning) -> torch.Tensor:
        c = self.case
        hstu_attention_triton(
            c.query, c.kv_cache, c.block_table, c.query_start_loc, c.seq_lens,
            c.pos_w, c.ts_w, c.params, self.out, self.max_query_len,
            bias_tables=self.tables, **(tuning or self.tuning),
        )  # fmt: skip
        return self.out[..., : c.params.value_dim]


class Candidates:
    """A candidate case, ready to run."""

    def __init__(self, case) -> None:
        self.case = case
        self.tables = kernel_bias_tables(case.pos_w, case.ts_w)
        self.out = torch.full_like(case.value, float("nan"))

    def __call__(self, config=None) -> torch.Tensor:
        c = self.case
        candidate_attention_triton(
            c.query, c.key, c.value, c.times, c.limits, c.candidate_start,
            c.block_table, c.kv_cache, c.pos_w, c.ts_w, c.params, self.out,
            bias_tables=self.tables, config=config,
        )  # fmt: skip
        return self.out


def _check(name: str, dtype, seed: int, got, expected) -> dict:
    error = relative_error(got, expected)
    unwritten = bool(got.isnan().any())
    return dict(case=name, dtype=str(dtype)[6:], seed=seed, rel_error=error,
                unwritten=unwritten, ok=error < 2e-2 and not unwritten)  # fmt: skip


def correctness() -> list[dict]:
    prefill_cases = [
        ("prefill 8192", [8192], [8192], {}),
        ("ragged 2048/4096/1/333", [2048, 4096, 1, 333], [2048, 4096, 1, 333], {}),
        ("cached prefix 4096+1024", [5120, 3000], [1024, 17], {}),
        ("returning 1024+80", [1104, 1104], [80, 80], {}),
        ("block boundaries", [16, 32, 4095, 4097], [16, 1, 2048, 4097], {}),
        ("MTGR masks, in-stream candidates", [3072, 3072], [3072, 2048],
         dict(context_ends=[256, 256], candidate_starts=[1024, 1024])),
        ("decode 64 x up to 8192", [random.randint(1, 8192) for _ in range(64)],
         [1] * 64, {}),
    ]  # fmt: skip
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for page in (16, PAGE, RANKING_PAGE):
            if dtype == torch.float16 and page != PAGE:
                continue  # fp16 once, at the retrieval block size
            for name, seq_lens, query_lens, masks in prefill_cases:
                seed = random.randrange(2**31)
                # Causal cases as retrieval models run them (no key limits).
                case = make_case(
                    seq_lens, query_lens, heads=4, dqk=HEAD_DIM, dv=HEAD_DIM,
                    block_size=page, dtype=dtype, device="cuda",
                    generator=torch.Generator().manual_seed(seed),
                    key_limits=bool(masks), **masks,
                )  # fmt: skip
                got = Prefill(case)()
                rows.append(_check(f"{name} (page {page})", dtype, seed, got,
                                   case.expected))  # fmt: skip
            for timing, at_request_time in (("", False), (" at request time", True)):
                seed = random.randrange(2**31)
                case = make_candidate_case(
                    [1024, 333, 2000], [2048, 7, 300], heads=4, dqk=HEAD_DIM,
                    dv=HEAD_DIM, block_size=page, dtype=dtype, device="cuda",
                    generator=torch.Generator().manual_seed(seed),
                    at_request_time=at_request_time,
                )  # fmt: skip
                rows.append(_check(
                    f"candidates 1024+2048, ragged{timing} (page {page})", dtype,
                    seed, Candidates(case)(), case.expected,
                ))  # fmt: skip
    for dim in (64, 256, 50):
        seed = random.randrange(2**31)
        case = make_case(
            [1500, 700], [1500, 300], heads=2, dqk=dim, dv=dim, block_size=PAGE,
            dtype=torch.bfloat16, device="cuda",
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        rows.append(_check(f"head dim {dim}", torch.bfloat16, seed, Prefill(case)(),
                           case.expected))  # fmt: skip
    return rows


def _flash_attention():
    """vLLM's FlashAttention build, or None where vLLM is not installed."""
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def _fa3_prefill(lengths: list[int], heads: int) -> float:
    """FlashAttention 3 (vLLM's build), causal, paged (blocks of 16); NaN
    without vLLM."""
    flash_attn_varlen_func = _flash_attention()
    if flash_attn_varlen_func is None:
        return float("nan")

    tokens = sum(lengths)
    q = torch.randn(tokens, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    blocks_per = [-(-n // 16) for n in lengths]
    k_cache = torch.randn(sum(blocks_per), 16, heads, HEAD_DIM, device="cuda",
                          dtype=torch.bfloat16)  # fmt: skip
    v_cache = torch.randn_like(k_cache)
    table = torch.zeros(len(lengths), max(blocks_per), dtype=torch.int32,
                        device="cuda")  # fmt: skip
    first = 0
    for i, count in enumerate(blocks_per):
        table[i, :count] = torch.arange(first, first + count, device="cuda")
        first += count
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()],
                      dtype=torch.int32, device="cuda")  # fmt: skip
    lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    return bench(
        flash_attn_varlen_func, q, k_cache, v_cache, max_seqlen_q=max(lengths),
        cu_seqlens_q=cu, max_seqlen_k=max(lengths), seqused_k=lens,
        block_table=table, causal=True, softmax_scale=HEAD_DIM**-0.5, fa_version=3,
    )  # fmt: skip


def _causal_pairs(lengths: list[int]) -> int:
    return sum(n * (n + 1) // 2 for n in lengths)


def prefill_speed(matmul_tflops: float) -> list[dict]:
    rows = []
    rng = random.Random(0)
    shapes = [(f"causal {n}", [n] * BATCH) for n in (1024, 2048, 4096, 8192)]
    shapes.append(("ragged, mean 1024", [rng.randint(1, 2047) for _ in range(BATCH)]))
    for heads in (4, 8):
        for name, lengths in shapes:
            flops = 4 * heads * HEAD_DIM * _causal_pairs(lengths)
            # As a retrieval model runs it (causal rows only: on Hopper the
            # Gluon kernel); `general_*`: the Triton kernel compiled for key
            # limits (ranking).
            case = make_case(
                lengths, lengths, heads=heads, dqk=HEAD_DIM, dv=HEAD_DIM,
                block_size=PAGE, dtype=torch.bfloat16, device="cuda",
                with_expected=False, key_limits=False,
            )  # fmt: skip
            ours = bench(Prefill(case))
            # The Triton kernel, which serves GPUs before Hopper (and these
            # shapes on Hopper before the Gluon kernel): a config forces it.
            triton_ms = bench(Prefill(case, prefill_config=_prefill_blocks(
                HEAD_DIM, HEAD_DIM)))  # fmt: skip
            general = replace(case, params=replace(case.params, key_limits=True))
            general_ms = bench(Prefill(general))
            kernel = "gluon" if paged_gluon.supports(
                case.query, case.kv_cache, case.params) else "triton"  # fmt: skip
            del case, general
            fa3 = _fa3_prefill(lengths, heads)
            rows.append(dict(shape=name, heads=heads, batch=len(lengths), ms=ours,
                             tflops=flops / ours / 1e9, kernel=kernel, fa3_ms=fa3,
                             fa3_tflops=flops / fa3 / 1e9, triton_ms=triton_ms,
                             triton_tflops=flops / triton_ms / 1e9,
                             general_ms=general_ms,
                             general_tflops=flops / general_ms / 1e9))  # fmt: skip
        # The DLRMv3 peer: each user's history (causal here, as Meta's
        # kernel; MTGR's context is bidirectional), then its candidates,
        # each over the history and itself.
        history, count = DLRMV3
        case = make_case(
            [history] * BATCH, [history] * BATCH, heads=heads, dqk=HEAD_DIM,
            dv=HEAD_DIM, block_size=PAGE, dtype=torch.bfloat16, device="cuda",
            with_expected=False,
        )  # fmt: skip
        history_ms = bench(Prefill(case))
        del case
        # Candidates whose limits fall anywhere in the history, and candidates
        # scored at the request's time (all see the whole history: Meta's).
        for timing, at_request_time in (("", False), (" at request time", True)):
            case = make_candidate_case(
                [history] * BATCH, [count] * BATCH, heads=heads, dqk=HEAD_DIM,
                dv=HEAD_DIM, block_size=PAGE, dtype=torch.bfloat16, device="cuda",
                with_expected=False, at_request_time=at_request_time,
            )  # fmt: skip
            limits = case.limits.long()
            candidate_pairs = int((limits + 1).sum())
            candidate_ms = bench(Candidates(case))
            del case
            pairs = BATCH * history * (history + 1) // 2 + candidate_pairs
            ours = history_ms + candidate_ms
            fa3 = _fa3_prefill([history + count] * BATCH, heads)
            flops = 4 * heads * HEAD_DIM * pairs
            fa3_flops = 4 * heads * HEAD_DIM * _causal_pairs([history + count] * BATCH)
            rows.append(dict(
                shape=f"DLRMv3 {history} history + {count} candidates{timing}",
                heads=heads, batch=BATCH, ms=ours, tflops=flops / ours / 1e9,
                fa3_ms=fa3, fa3_tflops=fa3_flops / fa3 / 1e9,
                history_ms=history_ms, candidates_ms=candidate_ms,
                candidates_tflops=4 * heads * HEAD_DIM * candidate_pairs
                / candidate_ms / 1e9,
            ))  # fmt: skip
    for row in rows:
        row["pct_matmul"] = 100 * row["tflops"] / matmul_tflops
        row["fa3_ratio"] = row["tflops"] / row["fa3_tflops"]
    return rows


def _decode_bytes(batch: int, length: int, heads: int, case) -> tuple[int, int]:
    """(bytes read: whole cache rows; bytes needed: k, v and the key time)."""
    row = case.kv_cache.shape[-1] * case.kv_cache.element_size()
    return batch * length * heads * row, batch * length * heads * (2 * HEAD_DIM + 4) * 2


def decode_speed(copy_tbps: float) -> list[dict]:
    flash_attn_varlen_func = _flash_attention()
    rows = []
    heads = 16
    for batch, length in ((32, 4096), (128, 2048), (64, 8192)):
        case = make_case(
            [length] * batch, [1] * batch, heads=heads, dqk=HEAD_DIM, dv=HEAD_DIM,
            block_size=PAGE, dtype=torch.bfloat16, device="cuda",
            with_expected=False,
        )  # fmt: skip
        ms = bench(Prefill(case))
        read, needed = _decode_bytes(batch, length, heads, case)
        del case
        rows.append(dict(kernel="vllm-mtgr paged decode", batch=batch, length=length,
                         ms=ms, tbps=needed / ms / 1e9,
                         read_tbps=read / ms / 1e9))  # fmt: skip
        if flash_attn_varlen_func is None:
            continue
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
                         ms=ms, tbps=fa_bytes / ms / 1e9,
                         read_tbps=fa_bytes / ms / 1e9))  # fmt: skip
        del k_cache, v_cache
    for row in rows:
        row["pct_copy"] = 100 * row["tbps"] / copy_tbps
        row["read_pct_copy"] = 100 * row["read_tbps"] / copy_tbps
    return rows


def decode_splits(copy_tbps: float) -> list[dict]:
    """Every key-split count at several decode batch shapes, against the
    heuristic's choice (`key_splits`)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    heads = 16
    for batch, length in ((1, 8192), (8, 4096), (32, 4096), (64, 2048), (256, 1024)):
        case = make_case(
            [length] * batch, [1] * batch, heads=heads, dqk=HEAD_DIM, dv=HEAD_DIM,
            block_size=PAGE, dtype=torch.bfloat16, device="cuda",
            with_expected=False,
        )  # fmt: skip
        run = Prefill(case)
        read, _ = _decode_bytes(batch, length, heads, case)
        times = {splits: bench(run, num_splits=splits)
                 for splits in (1, 2, 4, 8, 16, 32, 64)}  # fmt: skip
        chosen = key_splits(batch * heads, sms, *DECODE_SPLITS)
        best = min(times, key=times.get)
        rows.append(dict(batch=batch, length=length, heads=heads, chosen=chosen,
                         chosen_ms=bench(run), best=best, best_ms=times[best],
                         read_pct_copy_best=100 * read / times[best] / 1e9 / copy_tbps,
                         **{f"ms_{k}": v for k, v in times.items()}))  # fmt: skip
        del case, run
    return rows


def returning_speed() -> list[dict]:
    """New events over a cached history, 16 heads (mtgr-8b's), and
    recsys-examples' returning user (4 heads of 256, 3968 of 4096 cached)."""
    rows = []
    for batch, new, cached, heads, dim in ((1, 16, 1024, 16, 128),
                                           (1, 80, 1024, 16, 128),
                                           (8, 80, 1024, 16, 128),
                                           (8, 128, 3968, 4, 256)):  # fmt: skip
        case = make_case(
            [cached + new] * batch, [new] * batch, heads=heads, dqk=dim, dv=dim,
            block_size=PAGE, dtype=torch.bfloat16, device="cuda",
            with_expected=False,
        )  # fmt: skip
        rows.append(dict(batch=batch, new=new, cached=cached, heads=heads,
                         head_dim=dim, ms=bench(Prefill(case))))  # fmt: skip
    return rows


def head_size_cost(matmul_tflops: float) -> list[dict]:
    """What a head size that is not a power of two costs: the kernels pad
    dqk and dv to the next power of two (at least 16), so Meta's HSTU-large
    (2 x 25) computes as 2 x 32. Useful FLOPs count the real dims."""
    rows = []
    for length in (256, 2048):
        for heads, dqk, dv in ((2, 25, 25), (2, 32, 32), (2, 24, 32), (1, 50, 50),
                               (1, 64, 64), (3, 7, 13)):  # fmt: skip
            lengths = [length] * BATCH
            case = make_case(
                lengths, lengths, heads=heads, dqk=dqk, dv=dv, block_size=PAGE,
                dtype=torch.bfloat16, device="cuda", with_expected=False,
            )  # fmt: skip
            ms = bench(Prefill(case))
            del case
            tflops = 2 * heads * (dqk + dv) * _causal_pairs(lengths) / ms / 1e9
            rows.append(dict(length=length, batch=BATCH, heads=heads, dqk=dqk,
                             dv=dv, ms=ms, useful_tflops=tflops,
                             pct_matmul=100 * tflops / matmul_tflops))  # fmt: skip
    return rows


PREFILL_CONFIGS = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 2),
                   (64, 64, 4, 3), (64, 32, 4, 3), (128, 32, 8, 2), (128, 128, 8, 2),
                   (64, 64, 8, 3)]  # fmt: skip


def sweep() -> list[dict]:
    """Every tile configuration: prefill at 32 x 4096 (the kernel compiled
    for key limits, and the causal one at 1024 and 4096), candidates at
    DLRMv3."""
    rows = []
    shapes = ((4096, True, "prefill 32 x 4096"),
              (4096, False, "causal prefill 32 x 4096"),
              (1024, False, "causal prefill 32 x 1024"))  # fmt: skip
    for length, key_limits, kind in shapes:
        lengths = [length] * BATCH
        case = make_case(lengths, lengths, heads=4, dqk=HEAD_DIM, dv=HEAD_DIM,
                         block_size=PAGE, dtype=torch.bfloat16, device="cuda",
                         with_expected=False, key_limits=key_limits)  # fmt: skip
        run = Prefill(case)
        flops = 4 * 4 * HEAD_DIM * _causal_pairs(lengths)
        for config in PREFILL_CONFIGS:
            try:
                ms = bench(run, prefill_config=config)
                rate = flops / ms / 1e9
            except Exception as error:  # out of shared memory / registers
                ms, rate = float("nan"), str(error)[:60]
            rows.append(dict(kind=kind, config=config, ms=ms, tflops=rate))
        del case, run
    history, count = DLRMV3
    for timing, at_request_time in (("", False), (" at request time", True)):
        case = make_candidate_case([history] * BATCH, [count] * BATCH, heads=4,
                                   dqk=HEAD_DIM, dv=HEAD_DIM, block_size=PAGE,
                                   dtype=torch.bfloat16, device="cuda",
                                   with_expected=False,
                                   at_request_time=at_request_time)  # fmt: skip
        run = Candidates(case)
        flops = 4 * 4 * HEAD_DIM * int((case.limits.long() + 1).sum())
        for config in PREFILL_CONFIGS:
            try:
                ms = bench(run, config)
                rate = flops / ms / 1e9
            except Exception as error:
                ms, rate = float("nan"), str(error)[:60]
            rows.append(dict(kind=f"candidates DLRMv3{timing}", config=config,
                             ms=ms, tflops=rate))  # fmt: skip
        del case, run
    return rows


def header() -> str:
    try:
        import vllm

        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = "not installed"
    return (
        f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
        f"triton {triton.__version__}; vllm {vllm_version}; "
        f"python {platform.python_version()}; date {time.strftime('%Y-%m-%d')}"
    )


# name on the command line: (JSON key, runner of the measured ceilings,
# markdown title, table columns or None for all). JSON keys stay as they are.
SECTIONS = {
    "correctness": (
        "correctness", lambda limits: correctness(),
        "Correctness (relative error vs float32 PyTorch)",
        ["case", "dtype", "rel_error", "unwritten", "ok", "seed"],
    ),
    "prefill": (
        "prefill", lambda limits: prefill_speed(limits["matmul_tflops"]),
        f"Prefill, bf16, head dim {HEAD_DIM}, KV blocks of {PAGE}",
        ["shape", "heads", "batch", "kernel", "ms", "tflops", "pct_matmul",
         "fa3_tflops", "fa3_ratio", "triton_tflops", "general_tflops",
         "history_ms", "candidates_ms", "candidates_tflops"],
    ),
    "decode": (
        "decode", lambda limits: decode_speed(limits["copy_tbps"]),
        f"Decode, bf16, 16 heads x {HEAD_DIM}",
        ["kernel", "batch", "length", "ms", "tbps", "pct_copy", "read_tbps",
         "read_pct_copy"],
    ),
    "splits": (
        "decode_splits", lambda limits: decode_splits(limits["copy_tbps"]),
        "Decode key splits: ms per split count, and the heuristic's choice", None,
    ),
    "returning": (
        "returning", lambda limits: returning_speed(),
        "Returning user: new events over a cached history, bf16", None,
    ),
    "head_sizes": (
        "head_sizes", lambda limits: head_size_cost(limits["matmul_tflops"]),
        "Head sizes that are not powers of two (prefill, bf16, causal)", None,
    ),
    "sweep": ("sweep", lambda limits: sweep(), "Tile configurations", None),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    names = list(SECTIONS)
    parser.add_argument(
        "--sections", default=",".join(names[:-1]),
        help=f"comma-separated, of {', '.join(names)}",
    )  # fmt: skip
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {names}")
    device = torch.cuda.get_device_name()
    stem = f"kernels-{device.replace(' ', '_')}-{time.strftime('%Y%m%d')}"
    if sections == ["sweep"]:
        stem = "sweep-" + stem
    args.out.mkdir(parents=True, exist_ok=True)
    limits = ceilings()
    results: dict = dict(header=header(), ceilings=limits)
    parts = [
        f"# HSTU attention kernels\n\n{header()}",
        f"Ceilings: bf16 matmul {limits['matmul_tflops']:.0f} TFLOP/s, "
        f"device copy {limits['copy_tbps']:.2f} TB/s (read + write).",
    ]
    for name, (key, run, title, columns) in SECTIONS.items():
        if name not in sections:
            continue
        results[key] = run(limits)
        parts.append(f"## {title}\n\n" + markdown_table(results[key], columns))
        print(parts[-1], flush=True)
    report = "\n\n".join(parts)
    (args.out / f"{stem}.md").write_text(report + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    if not all(row["ok"] for row in results.get("correctness", [])):
        raise SystemExit("correctness check failed")


if __name__ == "__main__":
    main()
