"""HSTU prefill over the paged KV cache on Hopper, in Gluon.

The Triton prefill kernel (`paged_triton._prefill_kernel`) leaves the tensor
cores idle while a warpgroup computes a key block's bias and SiLU: Triton's
pipeliner overlaps the loads, not the products with the per-score work.
This kernel writes the pipeline out by hand, as FlashAttention 3 does within
one warpgroup: the scores of key block j + 1 go to the tensor cores before
the bias and SiLU of block j, and `silu(S_j) @ V_j` stays in flight while
the next scores complete. K, V, the key times and the position box arrive
by TMA in rings of two stages with an mbarrier each; a CTA takes 98 KB of
shared memory and 224 registers a thread, so two fit on an SM. On the H200
(`benchmarks/results/h200-20261204`) it ran 1.26-1.33x the Triton kernel's
TFLOP/s at 32 sequences x 4 heads x 128, lengths 1024-8192; without its
bias and SiLU the Triton kernel would reach only 1.44-1.59x
(`prefill_ablation.md`): the per-score work is still most of the gap to
FlashAttention 3.

Scope, checked by `supports` (other batches take `paged_triton`): Hopper,
16-bit models, causal rows (no key limits: retrieval and semantic-ID
models), key and value widths of 128, KV blocks a multiple of the 64-key
tile. The Triton interpreter does not run Gluon: CI compiles nothing of it;
`tests/test_gluon_prefill.py` runs on a Hopper GPU.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from .paged_torch import HSTUAttentionParams, KernelBiasTables
from .score_math import LN2, ROUNDING, ROUNDING_BITS, fast_log2, silu_half
from .tiles import request_tile

BLOCK_M, BLOCK_N, WIDTH = 64, 64, 128  # rows and keys of a tile; q/k/v width
TILE_M, TILE_N, TILE_D = (gl.constexpr(x) for x in (BLOCK_M, BLOCK_N, WIDTH))
TIME_WIDTH = 8  # a TMA box row must span 16 bytes: the 4 time slots and 4 more


@gluon.jit
def _issue(desc, bar, smem, row, column, pred):
    mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(desc, [row, column], bar, smem, pred=pred)


@gluon.jit
def _cache_row(table, block, blocks, heads, head, PAGE: gl.constexpr,
               BN: gl.constexpr):  # fmt: skip
    """Row of key block `block` in the cache viewed as `[slots, width]`
    (clamped to the tile's blocks: loads past them are predicated off, and
    the block table may end there)."""
    start = gl.minimum(block, blocks - 1) * BN
    page = gl.load(table + start // PAGE)
    return (page * heads + head) * PAGE + start % PAGE


@gluon.jit(do_not_specialize=["num_reqs"])  # batch-sized (`paged_triton`)
def _prefill_kernel(
    Q, OUT, BLOCK_TABLE, QUERY_START, SEQ_LENS, TS_W, k_desc, v_desc, t_desc,
    box_desc, stride_qt, stride_qh, stride_ot, stride_oh, stride_bt, num_reqs,
    heads, max_len, divisor, inv_normalizer, DQK: gl.constexpr, PAGE: gl.constexpr,
    NUM_BUCKETS: gl.constexpr,
):  # fmt: skip
    BM: gl.constexpr = TILE_M
    BN: gl.constexpr = TILE_N
    D: gl.constexpr = TILE_D
    DTYPE: gl.constexpr = k_desc.dtype
    S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16]
    )
    O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16]
    )
    P_LAYOUT: gl.constexpr = gl.DotOperandLayout(
        operand_index=0, parent=O_LAYOUT, k_width=2
    )
    ROWS: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
    KEYS: gl.constexpr = gl.SliceLayout(0, S_LAYOUT)
    LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
    TIMES: gl.constexpr = gl.BlockedLayout([1, 8], [32, 1], [4, 1], [1, 0])

    head = gl.program_id(1)
    program = gl.program_id(0)
    req, q_start, q_len, local = request_tile(QUERY_START, program, num_reqs, BM)
    if local * BM >= q_len:
        return
    seq_len = gl.load(SEQ_LENS + req)
    first_pos = seq_len - q_len + local * BM
    last_pos = gl.minimum(first_pos + BM, seq_len) - 1
    blocks = gl.cdiv(last_pos + 1, BN)
    first_masked = (first_pos + 1) // BN
    table = BLOCK_TABLE + req.to(gl.int64) * stride_bt

    q_smem = gl.allocate_shared_memory(DTYPE, [BM, D], k_desc.layout)
    k_smem = gl.allocate_shared_memory(DTYPE, [2, BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(DTYPE, [2, BN, D], v_desc.layout)
    t_smem = gl.allocate_shared_memory(DTYPE, [2, BN, 8], t_desc.layout)
    b_smem = gl.allocate_shared_memory(box_desc.dtype, [2, BN, BM], box_desc.layout)
    k_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    b_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(2):
        mbarrier.init(k_bar.index(s), count=1)
        mbarrier.init(v_bar.index(s), count=1)
        mbarrier.init(b_bar.index(s), count=1)

    # The position box of key block j starts at row bias_at + j * BN.
    bias_at = max_len - 1 - first_pos
    for s in gl.static_range(2):
        row = _cache_row(table, s, blocks, heads, head, PAGE, BN)
        ok = s < blocks
        _issue(k_desc, k_bar.index(s), k_smem.index(s), row, 0, ok)
        _issue(v_desc, v_bar.index(s), v_smem.index(s), row, 0, ok)
        mbarrier.expect(b_bar.index(s), t_desc.block_type.nbytes
                        + box_desc.block_type.nbytes, pred=ok)  # fmt: skip
        tma.async_copy_global_to_shared(t_desc, [row, 0], b_bar.index(s),
                                        t_smem.index(s), pred=ok)  # fmt: skip
        tma.async_copy_global_to_shared(box_desc, [bias_at + s * BN, 0],
                                        b_bar.index(s), b_smem.index(s),
                                        pred=ok)  # fmt: skip

    # Queries, halved (exact; `score_math.silu_half`), and their times.
    m = local * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, LOAD))
    d = gl.arange(0, D, layout=gl.SliceLayout(0, LOAD))
    token = (q_start + m).to(gl.int64)
    q_rows = Q + token * stride_qt + head * stride_qh
    q = gl.load(q_rows[:, None] + d[None, :], mask=(m < q_len)[:, None], other=0.0)
    q_smem.store(q * 0.5)
    fence_async_shared()

    mr = local * BM + gl.arange(0, BM, layout=ROWS)
    mr_ok = mr < q_len
    pos_q = seq_len - q_len + mr
    t_rows = Q + (q_start + mr).to(gl.int64) * stride_qt + head * stride_qh + DQK
    b0 = gl.load(t_rows, mask=mr_ok, other=0.0).to(gl.float32)
    b1 = gl.load(t_rows + 1, mask=mr_ok, other=0.0).to(gl.float32)
    b2 = gl.load(t_rows + 2, mask=mr_ok, other=0.0).to(gl.float32)
    b3 = gl.load(t_rows + 3, mask=mr_ok, other=0.0).to(gl.float32)
    high_q = (b2 + 256.0 * b3) * 65536.0
    low_q = b0 + 256.0 * b1
    slot = gl.arange(0, 8, layout=gl.SliceLayout(0, TIMES))
    low_w = gl.where(slot < 2, gl.where(slot % 2 == 0, 1.0, 256.0), 0.0)
    high_w = gl.where((slot >= 2) & (slot < 4),
                      gl.where(slot % 2 == 0, 1.0, 256.0), 0.0)  # fmt: skip
    key = gl.arange(0, BN, layout=KEYS)

    zeros = gl.zeros([BM, BN], gl.float32, layout=S_LAYOUT)
    acc = gl.zeros([BM, D], gl.float32, layout=O_LAYOUT)
    mbarrier.wait(k_bar.index(0), 0)
    s_cur = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zeros,
                          use_acc=False, is_async=True)  # fmt: skip
    s_cur = warpgroup_mma_wait(0, deps=(s_cur,))
    row = _cache_row(table, 2, blocks, heads, head, PAGE, BN)
    _issue(k_desc, k_bar.index(0), k_smem.index(0), row, 0, 2 < blocks)

    for j in range(blocks):
        stage = j % 2
        phase = (j // 2) & 1
        # Scores of the next key block go to the tensor cores first (the last
        # block issues its own again: no branch around an async product).
        nxt = gl.minimum(j + 1, blocks - 1)
        mbarrier.wait(k_bar.index(nxt % 2), (nxt // 2) & 1)
        s_next = warpgroup_mma(q_smem, k_smem.index(nxt % 2).permute((1, 0)), zeros,
                               use_acc=False, is_async=True)  # fmt: skip

        mbarrier.wait(b_bar.index(stage), phase)
        raw = t_smem.index(stage).load(TIMES).to(gl.float32)
        high_k = gl.convert_layout(gl.sum(raw * high_w[None, :], axis=1), KEYS)
        high_k = high_k * 65536.0
        low_k = gl.convert_layout(gl.sum(raw * low_w[None, :], axis=1), KEYS)
        box = b_smem.index(stage).permute((1, 0)).load(S_LAYOUT).to(gl.float32)
        delta = (high_q[:, None] - high_k[None, :]) + (low_q[:, None] - low_k[None, :])
        seconds = gl.maximum(gl.abs(delta), 1.0)
        scaled = fast_log2(seconds) * (LN2 / divisor) - 0.5
        scaled = gl.minimum(scaled, NUM_BUCKETS) + ROUNDING
        bucket = scaled.to(gl.int32, bitcast=True) - ROUNDING_BITS
        rab = box + gl.load(TS_W + bucket)
        p = silu_half(s_cur + rab, DTYPE, True)
        if j >= first_masked:
            p = gl.where((j * BN + key)[None, :] <= pos_q[:, None], p, 0.0)

        mbarrier.wait(v_bar.index(stage), phase)
        if (j + 1) * BN > seq_len:
            # Slots past the sequence may hold anything (stale blocks); a
            # zero weight times an infinite value would still be NaN.
            v_view = v_smem.index(stage)
            v = v_view.load(LOAD)
            n = j * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, LOAD))
            v_view.store(gl.where((n < seq_len)[:, None], v, 0.0))
            fence_async_shared()
            gl.thread_barrier()
        acc = warpgroup_mma(gl.convert_layout(p, P_LAYOUT), v_smem.index(stage), acc,
                            is_async=True)  # fmt: skip
        # One product in flight (this block's P @ V): the scores are in,
        # and the previous block's P @ V has read its values.
        s_cur, acc = warpgroup_mma_wait(1, deps=(s_next, acc))
        gl.thread_barrier()  # every warp is done with this stage's times and box
        row = _cache_row(table, j + 3, blocks, heads, head, PAGE, BN)
        _issue(k_desc, k_bar.index(nxt % 2), k_smem.index(nxt % 2), row, 0,
               j + 3 < blocks)  # fmt: skip
        row = _cache_row(table, j + 2, blocks, heads, head, PAGE, BN)
        ok = j + 2 < blocks
        mbarrier.expect(b_bar.index(stage), t_desc.block_type.nbytes
                        + box_desc.block_type.nbytes, pred=ok)  # fmt: skip
        tma.async_copy_global_to_shared(t_desc, [row, 0], b_bar.index(stage),
                                        t_smem.index(stage), pred=ok)  # fmt: skip
        tma.async_copy_global_to_shared(box_desc, [bias_at + (j + 2) * BN, 0],
                                        b_bar.index(stage), b_smem.index(stage),
                                        pred=ok)  # fmt: skip
        # The previous block's values are read (its product is done).
        row = _cache_row(table, j + 1, blocks, heads, head, PAGE, BN)
        _issue(v_desc, v_bar.index(1 - stage), v_smem.index(1 - stage), row, 0,
               (j >= 1) & (j + 1 < blocks))  # fmt: skip
    acc = warpgroup_mma_wait(0, deps=(acc,))
    for s in gl.static_range(2):
        mbarrier.invalidate(k_bar.index(s))
        mbarrier.invalidate(v_bar.index(s))
        mbarrier.invalidate(b_bar.index(s))

    mo = local * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, O_LAYOUT))
    do = gl.arange(0, D, layout=gl.SliceLayout(0, O_LAYOUT))
    out = (OUT + (q_start + mo).to(gl.int64)[:, None] * stride_ot + head * stride_oh
           + do[None, :])  # fmt: skip
    gl.store(out, (acc * inv_normalizer).to(OUT.dtype.element_ty),
             mask=(mo < q_len)[:, None])  # fmt: skip


@functools.cache
def capability(device: torch.device) -> int:
    """The major compute capability of a CUDA device (9: Hopper)."""
    return torch.cuda.get_device_capability(device)[0]


def supports(
    query: torch.Tensor, kv_cache: torch.Tensor, params: HSTUAttentionParams
) -> bool:
    """Whether this kernel runs the batch (else `paged_triton`'s prefill)."""
    return (
        query.is_cuda
        and capability(query.device) == 9
        and query.dtype in (torch.bfloat16, torch.float16)
        and kv_cache.dtype == query.dtype
        and not params.key_limits
        and params.attention_dim == WIDTH
        and params.value_dim == WIDTH
        and kv_cache.shape[2] % BLOCK_N == 0
        and kv_cache.is_contiguous()
        # TMA coordinates are 32-bit: rows of the cache viewed as [slots, width].
        and kv_cache.numel() // kv_cache.shape[-1] < 2**31
    )


def hstu_prefill_gluon(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    tables: KernelBiasTables,
    params: HSTUAttentionParams,
    output: torch.Tensor,
) -> None:
    """`paged_triton.hstu_attention_triton`'s prefill, where `supports`."""
    num_tokens, heads = query.shape[0], query.shape[1]
    num_reqs = seq_lens.shape[0]
    hs = kv_cache.shape[-1] // 2
    rows = kv_cache.view(-1, kv_cache.shape[-1])
    dtype = gl.bfloat16 if query.dtype == torch.bfloat16 else gl.float16

    def descriptor(first: int, width: int, block: list[int]) -> TensorDescriptor:
        layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
        return TensorDescriptor(rows[:, first:], [rows.shape[0], width],
                                list(rows.stride()), block, layout)  # fmt: skip

    dqk = params.attention_dim
    box = tables.position_box_bf16
    box_layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_M], gl.bfloat16)
    _prefill_kernel[(num_tokens // BLOCK_M + num_reqs, heads)](
        query, output, block_table, query_start_loc, seq_lens, tables.time,
        descriptor(0, dqk, [BLOCK_N, WIDTH]), descriptor(hs, WIDTH, [BLOCK_N, WIDTH]),
        descriptor(dqk, TIME_WIDTH, [BLOCK_N, TIME_WIDTH]),
        TensorDescriptor(box, list(box.shape), list(box.stride()),
                         [BLOCK_N, BLOCK_M], box_layout),
        query.stride(0), query.stride(1), output.stride(0), output.stride(1),
        block_table.stride(0), num_reqs, heads, params.max_len,
        params.time_bucket_divisor, 1.0 / params.normalizer, DQK=dqk,
        PAGE=kv_cache.shape[2], NUM_BUCKETS=tables.time.numel() - 1, num_warps=4,
    )  # fmt: skip
