"""HSTU attention over vLLM's paged KV cache, in Triton (the GPU path).

Same contract as `paged_torch` (layout, positions, key-limit masks). Kernels:

* `_prefill_kernel`: any batch (prefill chunks, decode tokens, both). A
  program owns `BLOCK_M` query rows of one request and one head, walks that
  request's keys page by page through the block table and accumulates
  `silu(q.k + rab) / N @ v` with tensor-core dots. HSTU has no softmax, so
  there is no running max or rescaling. Programs find their request by a
  binary search over `query_start_loc` on the device (as vLLM's unified
  attention does, `tiles.request_tile`): no host work per batch, so the launch is
  graph-safe.
* `_decode_kernel`: one query token per request. Memory-bound; the keys of a
  request are split across `num_splits` programs whose partial outputs are
  simply summed (again: no softmax to renormalise).
* `_candidate_kernel`: ranking candidates, which are not tokens: query rows
  of all candidates of all requests (found by the same binary search, over
  `candidate_start`) against their request's cached history up to each one's
  key limit, plus each one's own key and value, passed beside the cache.
* `_layer_norm_kernel`: `u * (LayerNorm(attention) * w + b)`, reading the
  attention output straight from the `[T, heads, cache_head_size]` buffer.
* `_write_kv_kernel`: stores new keys and values in their cache slots.

What makes the key loop fast (each point read off ptxas and SASS for sm_90,
Triton 3.6, no GPU needed; `benchmarks/results/h200-20261201/NOTES.md`):

* The bias is added to the scores by an instruction the combiner cannot fold
  into the `tl.dot` accumulator (`_add_after_dot`): folded, the accumulator's
  initial value came from ordinary instructions inside the pipelined loop,
  and ptxas serialised every wgmma (warning C7515).
* The relative-position bias of query rows at consecutive positions (every
  tile without candidates) against a key block is a Toeplitz tile: row i,
  key n reads `pos_w[N - 1 - i + n]`. The layer keeps the table as a box
  table `[x, i] = pos_w[x - i]` (`paged_torch.KernelBiasTables`), in which
  that tile is one rectangle, loaded by one TMA box per key block (Hopper):
  no address per score, nothing held in registers across the pipelined
  loop. Per-row pointer tiles (still used for tiles with candidates, and
  where there is no TMA) kept a `[BLOCK_M, BLOCK_N]` tensor of 64-bit
  addresses live and made every variant spill (ptxas: 255 registers, a
  700-1400 byte stack, against 48 bytes with the box). For those, the
  table is kept as four copies shifted by 0..3 entries, so that every row's
  run starts 16-byte aligned in one of them.
* Ranking candidates scored at the request's time (one time, one key limit
  per tile) share one bias row: the bias is computed once per key.
* K, V and the key times of blocks whose keys are all real come by TMA
  boxes, one page each (KV blocks a multiple of the key tile); Triton's
  pipeliner did not overlap their pointer loads with a TMA box in the loop.
* Times are exact float halves (`high * 65536`, `low`), so a time difference
  is three adds; a query's come from 1-D loads, so that every per-score
  computation stays in the MMA layout (from a 2-D load, the whole bias was
  computed in another layout and shuffled into the MMA's, score by score).
* Key blocks that every row of a tile sees whole run without masks.
* With a KV block at least as long as the key tile, a key tile is one page:
  one page-table read per tile, and contiguous K/V rows.

Integer arguments that follow the batch's size (requests, tokens, the
partial sums' stride) are not specialised (`do_not_specialize`): Triton
compiles a kernel again for an integer that is 1 or a multiple of 16 where
it had seen neither, seconds in the middle of serving (the prefill kernel
compiles in ~6 s for sm_90). On the H200, the first 64-user decode run of
a fresh `mtgr-8b` engine took 7.8 s against 0.75 s after, while one kernel
was added to Triton's cache (`benchmarks/results/h200-20261203d`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from vllm_mtgr.layout.slots import TIME_SLOTS

from . import paged_gluon
from .paged_gluon import capability
from .paged_torch import (
    BOX_ROWS,
    HSTUAttentionParams,
    KernelBiasTables,
    kernel_bias_tables,
)
from .score_math import (
    LN2,
    ROUNDING,
    ROUNDING_BITS,
    fast_log2,
    silu_half,
)
from .tiles import request_tile


@triton.jit
def _times(raw):
    """Keys' times from their byte slots `raw` (`[keys, >= 4]`, slots from the
    fifth on ignored): exact float halves (high * 65536, low), t = high + low.
    The halves then reach the MMA layout as two small vectors."""
    i = tl.arange(0, raw.shape[1])
    weights = tl.where(i % 2 == 0, 1.0, 256.0)
    low = tl.sum(tl.where(i < 2, raw.to(tl.float32) * weights, 0.0), axis=1)
    high = tl.sum(tl.where((i >= 2) & (i < 4), raw.to(tl.float32) * weights, 0.0),
                  axis=1)  # fmt: skip
    return high * 65536.0, low


@triton.jit
def _row_times(ptrs, mask):
    """Queries' times, as `_times`, from 1-D loads (see the module doc)."""
    b0 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    b1 = tl.load(ptrs + 1, mask=mask, other=0.0).to(tl.float32)
    b2 = tl.load(ptrs + 2, mask=mask, other=0.0).to(tl.float32)
    b3 = tl.load(ptrs + 3, mask=mask, other=0.0).to(tl.float32)
    return (b2 + 256.0 * b3) * 65536.0, b0 + 256.0 * b1


@triton.jit
def _row_limits(ptrs, mask):
    """Queries' key limits from their 3 byte slots (1-D loads)."""
    b0 = tl.load(ptrs, mask=mask, other=0.0).to(tl.int32)
    b1 = tl.load(ptrs + 1, mask=mask, other=0.0).to(tl.int32)
    b2 = tl.load(ptrs + 2, mask=mask, other=0.0).to(tl.int32)
    return b0 + (b1 << 8) + (b2 << 16)


@triton.jit
def _table(ptrs, FAST: tl.constexpr):
    """Gather float32 table entries at `ptrs`, in the layout `ptrs` already has.

    Fast: an inline load, which Triton's coalescing leaves alone: a plain
    `tl.load` gets a coalesced layout of its own, and the 2D pointers and
    results then cross shared memory (with barriers) to and from the layout
    of the scores, per key block.
    """
    if FAST:
        values = tl.inline_asm_elementwise(
            "ld.global.nc.f32 $0, [$1];", "=r,l", [ptrs], dtype=tl.float32,
            is_pure=True, pack=1,
        )  # fmt: skip
    else:
        values = tl.load(ptrs)
    return values


@triton.jit
def _activated(x, SILU: tl.constexpr, FAST: tl.constexpr):
    """silu(x) in x's dtype (SILU), or x unchanged. Fast: `silu_half`'s
    tanh, one SFU op per element; a float32 sigmoid (exp and a true
    division per element) over a candidate tile's q, k and v made the
    candidate kernel 24% slower in the DLRMv3 forward (H200, 2026-12-03),
    its programs being short (one history of ~1000 keys each)."""
    if SILU:
        x = silu_half(x.to(tl.float32) * 0.5, x.dtype, FAST)
    return x


@triton.jit
def _time_bias(high_q, low_q, high_k, low_k, TS_W, divisor,
               NUM_BUCKETS: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """ts_w[floor(ln(max(|t_q - t_k|, 1)) / divisor)], clamped to the table.

    |t_q - t_k| from the times' halves: exact, then rounded once to float32,
    as Meta's int64 -> float32.
    """
    delta = (high_q[:, None] - high_k[None, :]) + (low_q[:, None] - low_k[None, :])
    seconds = tl.maximum(tl.abs(delta), 1.0)
    if FAST:
        # Clamped before rounding (min(floor x, B) = floor(min(x, B + 0.5)));
        # the rounding constant's bits are taken off the table pointer.
        scaled = fast_log2(seconds) * (LN2 / divisor) - 0.5
        scaled = tl.minimum(scaled, NUM_BUCKETS) + ROUNDING
        bias = _table(TS_W - ROUNDING_BITS + scaled.to(tl.int32, bitcast=True), FAST)
    else:  # exactly Meta's float32 arithmetic
        bucket = tl.math.div_rn(tl.log(seconds), divisor).to(tl.int32)
        bias = _table(TS_W + tl.minimum(tl.maximum(bucket, 0), NUM_BUCKETS), FAST)
    return bias


@triton.jit
def _add_after_dot(scores, bias, FAST: tl.constexpr):
    """scores + bias, opaque to Triton's combiner when FAST (module doc)."""
    if FAST:
        out = tl.inline_asm_elementwise(
            "add.f32 $0, $1, $2;", "=f,f,f", [scores, bias], dtype=tl.float32,
            is_pure=True, pack=1,
        )  # fmt: skip
    else:
        out = scores + bias
    return out


@triton.jit
def _logical_position(pos_q, limit_q):
    """Candidates (0 < limit <= position) sit at position `limit`."""
    return tl.where((limit_q > 0) & (limit_q <= pos_q), limit_q, pos_q)


@triton.jit
def _bias_rows(POSITION_COPIES, stride_copy, max_len, logical):
    """Pointers to each row's position bias for key 0, `pos_w[N - 1 - i]`,
    in the copy (shifted by `(N - 1 - i) % 4`) where it is 16-byte aligned."""
    offset = max_len - 1 - logical
    return POSITION_COPIES + (offset % 4) * stride_copy + offset // 4 * 4


@triton.jit
def _key_block(
    acc, q, high_q, low_q, bias_at, pos_q, row_end, start, end, table, KV, BIAS_BOX,
    K_BOX, V_BOX, T_BOX, TS_W, stride_kvb, stride_kvh, stride_kvn, head, own_bias,
    divisor, DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr, HS: tl.constexpr, PAGE: tl.constexpr,
    NUM_BUCKETS: tl.constexpr, PRECISION: tl.constexpr, FAST: tl.constexpr,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, TOEPLITZ: tl.constexpr,
    OWN_KEYS: tl.constexpr,
):  # fmt: skip
    """acc += silu(q.k + rab) @ v over the keys [start, start + BLOCK_N).

    The position bias: TOEPLITZ, one box of the position box table from its
    row `bias_at + start` (rows at consecutive positions, `_position_box`); else
    `bias_at` points at each row's bias for key 0 (`_bias_rows`). Rows may
    come as one (`high_q`, `low_q`, `bias_at` of shape [1]) when all share
    their time and position: the bias is then one row for the whole tile.
    `q` and the tables are halved (`silu_half`). Unmasked: every key is
    below `end` and visible to every row. Masked: keys from `end` on load as
    zeros (they add nothing whatever their score); a row sees keys below its
    `row_end` and, with OWN_KEYS, its own key (position `pos_q`, distance 0;
    rows at their own position see it anyway, candidates' are not cached).
    """
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    c = tl.arange(0, BLOCK_N)
    n = start + c
    n_ok = n < end
    if K_BOX is not None and not MASKED:
        # One page per key block, every key real: TMA boxes, pipelined.
        at = [tl.load(table + start // PAGE), head, start % PAGE, 0]
        k = K_BOX.load(at).reshape(BLOCK_N, BLOCK_DQK)
        v = V_BOX.load(at).reshape(BLOCK_N, BLOCK_DV)
        high_k, low_k = _times(T_BOX.load(at).reshape(BLOCK_N, 8))
    else:
        # Masked keys load as zeros: stale slots may hold anything, and a
        # masked score times an infinite value would still be NaN.
        if PAGE % BLOCK_N == 0:  # one page per key block
            page = tl.load(table + start // PAGE).to(tl.int64)
            rows = KV + page * stride_kvb + head * stride_kvh
            rows += (start % PAGE + c) * stride_kvn
        else:
            page = tl.load(table + n // PAGE, mask=n_ok, other=0).to(tl.int64)
            rows = KV + page * stride_kvb + head * stride_kvh
            rows += (n % PAGE) * stride_kvn
        key_mask = d_qk[None, :] < DQK
        value_mask = d_v[None, :] < DV
        if MASKED:
            key_mask = key_mask & n_ok[:, None]
            value_mask = value_mask & n_ok[:, None]
        k = tl.load(rows[:, None] + d_qk[None, :], mask=key_mask, other=0.0)
        v = tl.load(rows[:, None] + HS + d_v[None, :], mask=value_mask, other=0.0)
        i = tl.arange(0, 4)
        raw = tl.load(rows[:, None] + DQK + i[None, :], mask=n_ok[:, None], other=0.0)
        high_k, low_k = _times(raw)
    a = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if TOEPLITZ:
        bias = tl.trans(BIAS_BOX.load([bias_at + start, 0]))
    else:
        bias = tl.load(bias_at[:, None] + n[None, :])
    if MASKED and OWN_KEYS:
        own = n[None, :] == pos_q[:, None]
        bias = tl.where(own, own_bias, bias)
    rab = bias + _time_bias(high_q, low_q, high_k, low_k, TS_W, divisor,
                            NUM_BUCKETS, FAST)  # fmt: skip
    rab = tl.broadcast_to(rab, a.shape)
    p = silu_half(_add_after_dot(a, rab, FAST), v.dtype, FAST)
    if MASKED:
        visible = n[None, :] < row_end[:, None]
        if OWN_KEYS:
            visible = visible | own
        p = tl.where(visible, p, 0.0)
    return tl.dot(p, v, acc, input_precision=PRECISION)


@triton.jit
def _key_range(
    acc, q, high_q, low_q, bias_at, pos_q, row_end, lo, full_end, hi, key_end, table,
    KV, BIAS_BOX, K_BOX, V_BOX, T_BOX, TS_W, stride_kvb, stride_kvh, stride_kvn, head,
    own_bias, divisor, DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr, HS: tl.constexpr, PAGE: tl.constexpr,
    NUM_BUCKETS: tl.constexpr, PRECISION: tl.constexpr, FAST: tl.constexpr,
    BLOCK_N: tl.constexpr, TOEPLITZ: tl.constexpr, OWN_KEYS: tl.constexpr,
):  # fmt: skip
    """Keys [lo, hi): blocks before `full_end` unmasked, the rest masked,
    with keys from `key_end` on not loaded."""
    for start in range(lo, full_end, BLOCK_N):
        acc = _key_block(
            acc, q, high_q, low_q, bias_at, pos_q, row_end, start, full_end, table, KV,
            BIAS_BOX, K_BOX, V_BOX, T_BOX, TS_W, stride_kvb, stride_kvh, stride_kvn,
            head, own_bias, divisor, DQK, DV, BLOCK_DQK, BLOCK_DV, HS, PAGE,
            NUM_BUCKETS, PRECISION, FAST, BLOCK_N, False, TOEPLITZ, OWN_KEYS,
        )  # fmt: skip
    for start in range(tl.maximum(lo, full_end), hi, BLOCK_N):
        acc = _key_block(
            acc, q, high_q, low_q, bias_at, pos_q, row_end, start, key_end, table, KV,
            BIAS_BOX, K_BOX, V_BOX, T_BOX, TS_W, stride_kvb, stride_kvh, stride_kvn,
            head, own_bias, divisor, DQK, DV, BLOCK_DQK, BLOCK_DV, HS, PAGE,
            NUM_BUCKETS, PRECISION, FAST, BLOCK_N, True, TOEPLITZ, OWN_KEYS,
        )  # fmt: skip
    return acc


@triton.jit
def _tile_keys(
    acc, q, high_q, low_q, bias_at, pos_q, row_end, full_end, prefix_end, key_end,
    diagonal, last_pos, table, KV, BIAS_BOX, K_BOX, V_BOX, T_BOX, TS_W, stride_kvb,
    stride_kvh, stride_kvn, head, own_bias, divisor, DQK: tl.constexpr,
    DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HS: tl.constexpr,
    PAGE: tl.constexpr, NUM_BUCKETS: tl.constexpr, PRECISION: tl.constexpr,
    FAST: tl.constexpr, BLOCK_N: tl.constexpr, TOEPLITZ: tl.constexpr,
    OWN_KEYS: tl.constexpr,
):  # fmt: skip
    """A prefill tile's keys: each row's prefix (causal, bidirectional, or
    before the candidates), then the tile's diagonal, for candidates' own
    keys."""
    acc = _key_range(
        acc, q, high_q, low_q, bias_at, pos_q, row_end, 0, full_end, prefix_end,
        key_end, table, KV, BIAS_BOX, K_BOX, V_BOX, T_BOX, TS_W, stride_kvb, stride_kvh,
        stride_kvn, head, own_bias, divisor, DQK, DV, BLOCK_DQK, BLOCK_DV, HS, PAGE,
        NUM_BUCKETS, PRECISION, FAST, BLOCK_N, TOEPLITZ, OWN_KEYS,
    )  # fmt: skip
    for start in range(diagonal * BLOCK_N, last_pos + 1, BLOCK_N):
        acc = _key_block(
            acc, q, high_q, low_q, bias_at, pos_q, row_end, start, key_end, table, KV,
            BIAS_BOX, K_BOX, V_BOX, T_BOX, TS_W, stride_kvb, stride_kvh, stride_kvn,
            head, own_bias, divisor, DQK, DV, BLOCK_DQK, BLOCK_DV, HS, PAGE,
            NUM_BUCKETS, PRECISION, FAST, BLOCK_N, True, TOEPLITZ, OWN_KEYS,
        )  # fmt: skip
    return acc


@triton.jit(do_not_specialize=["num_reqs"])  # batch-sized (module doc)
def _prefill_kernel(
    Q, KV, OUT, BLOCK_TABLE, QUERY_START, SEQ_LENS, POSITION_COPIES, BIAS_BOX, K_BOX,
    V_BOX, T_BOX, TS_W, stride_qt, stride_qh, stride_kvb, stride_kvh, stride_kvn,
    stride_ot, stride_oh, stride_bt, stride_copy, num_reqs, max_len, divisor,
    inv_normalizer, DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr, HS: tl.constexpr, PAGE: tl.constexpr,
    NUM_BUCKETS: tl.constexpr, PRECISION: tl.constexpr, FAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KEY_LIMITS: tl.constexpr,
):  # fmt: skip
    """One tile of BLOCK_M query rows of one request and head. With a
    Toeplitz box (`BIAS_BOX`, Hopper), tiles without candidates take their
    position bias from it. Not KEY_LIMITS: every row is causal (its limit
    slots are not read)."""
    head = tl.program_id(1)
    req, q_start, q_len, local = request_tile(
        QUERY_START, tl.program_id(0), num_reqs, BLOCK_M
    )
    if local * BLOCK_M >= q_len:
        return
    seq_len = tl.load(SEQ_LENS + req)

    m = local * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < q_len
    token = (q_start + m).to(tl.int64)
    pos_q = seq_len - q_len + m
    q_rows = Q + token * stride_qt + head * stride_qh
    d_qk = tl.arange(0, BLOCK_DQK)
    q = tl.load(q_rows[:, None] + d_qk[None, :],
                mask=m_ok[:, None] & (d_qk[None, :] < DQK), other=0.0)  # fmt: skip
    q = q * 0.5  # exact; the scores come out halved (`silu_half`)
    high_q, low_q = _row_times(q_rows + DQK, m_ok)
    if KEY_LIMITS:
        limit_q = _row_limits(q_rows + DQK + 4, m_ok)
    else:
        limit_q = tl.zeros_like(pos_q)
    # Keys j < row_end are visible (i + 1 when causal, else the key limit).
    row_end = tl.where(limit_q == 0, pos_q + 1, limit_q)
    logical = tl.where(m_ok, _logical_position(pos_q, limit_q), 0)

    first_pos = seq_len - q_len + local * BLOCK_M
    last_pos = tl.minimum(first_pos + BLOCK_M, seq_len) - 1
    prefix_end = tl.minimum(tl.max(tl.where(m_ok, row_end, 0), axis=0), seq_len)
    full_end = tl.min(tl.where(m_ok, row_end, seq_len), axis=0) // BLOCK_N * BLOCK_N
    # Keys that exist for this tile: every row's prefix and its own key.
    key_end = tl.maximum(prefix_end, last_pos + 1)
    diagonal = tl.maximum(tl.cdiv(prefix_end, BLOCK_N), first_pos // BLOCK_N)
    table = BLOCK_TABLE + req.to(tl.int64) * stride_bt
    own_bias = tl.load(POSITION_COPIES + max_len - 1)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # Rows at consecutive positions (no candidate among them): their bias
    # against a key block is one box of the position box table. Causal rows
    # always are: without key limits only that path is compiled, and the
    # kernel hardly spills (ptxas for sm_90, Triton 3.6, 64 x 64 tiles, 3
    # stages: a 976-byte stack with both paths, 8 bytes with this one).
    if BIAS_BOX is None:  # no box (not Hopper): every tile reads rows' runs
        consecutive: tl.constexpr = False
    elif not KEY_LIMITS:
        consecutive: tl.constexpr = True
    else:
        consecutive = tl.sum(tl.where(m_ok & (logical != pos_q), 1, 0), axis=0) == 0
    if consecutive:
        acc = _tile_keys(
            acc, q, high_q, low_q, max_len - 1 - first_pos, pos_q, row_end, full_end,
            prefix_end, key_end, diagonal, last_pos, table, KV, BIAS_BOX, K_BOX, V_BOX,
            T_BOX, TS_W, stride_kvb, stride_kvh, stride_kvn, head, own_bias, divisor,
            DQK, DV, BLOCK_DQK, BLOCK_DV, HS, PAGE, NUM_BUCKETS, PRECISION, FAST,
            BLOCK_N, True, False,
        )  # fmt: skip
    else:
        bias_rows = _bias_rows(POSITION_COPIES, stride_copy, max_len, logical)
        acc = _tile_keys(
            acc, q, high_q, low_q, bias_rows, pos_q, row_end, full_end, prefix_end,
            key_end, diagonal, last_pos, table, KV, BIAS_BOX, K_BOX, V_BOX, T_BOX, TS_W,
            stride_kvb, stride_kvh, stride_kvn, head, own_bias, divisor, DQK, DV,
            BLOCK_DQK, BLOCK_DV, HS, PAGE, NUM_BUCKETS, PRECISION, FAST, BLOCK_N, False,
            True,
        )  # fmt: skip

    d_v = tl.arange(0, BLOCK_DV)
    out = OUT + head * stride_oh + token[:, None] * stride_ot + d_v[None, :]
    tl.store(out, (acc * inv_normalizer).to(OUT.dtype.element_ty),
             mask=m_ok[:, None] & (d_v[None, :] < DV))  # fmt: skip


@triton.jit(do_not_specialize=["stride_ps"])  # batch-sized (module doc)
def _decode_kernel(
    Q, KV, K_BOX, V_BOX, T_BOX, PARTIAL, BLOCK_TABLE, SEQ_LENS, POSITION_COPIES,
    TS_W,
    stride_qt, stride_qh, stride_kvb, stride_kvh, stride_kvn,
    stride_ps, stride_pt, stride_ph, stride_bt, stride_copy,
    max_len, divisor, inv_normalizer,
    DQK: tl.constexpr, DV: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HS: tl.constexpr,
    PAGE: tl.constexpr, NUM_BUCKETS: tl.constexpr, PRECISION: tl.constexpr,
    FAST: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One query per request; the query is padded to 16 rows so both products
    run on tensor cores (the other rows are zeros and never stored)."""
    req = tl.program_id(0)
    head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    seq_len = tl.load(SEQ_LENS + req)
    blocks = tl.cdiv(seq_len, BLOCK_N)
    per_split = tl.cdiv(blocks, num_splits) * BLOCK_N
    begin = split * per_split
    end = tl.minimum(seq_len, begin + per_split)

    r = tl.arange(0, 16)
    first = r < 1
    q_rows = Q + req.to(tl.int64) * stride_qt + head * stride_qh + r * 0
    d_qk = tl.arange(0, BLOCK_DQK)
    q = tl.load(q_rows[:, None] + d_qk[None, :],
                mask=first[:, None] & (d_qk[None, :] < DQK), other=0.0)  # fmt: skip
    q = q * 0.5
    high_q, low_q = _row_times(q_rows + DQK, first)
    limit_q = _row_limits(q_rows + DQK + 4, first)
    pos_q = seq_len - 1 + r * 0
    row_end = tl.where(limit_q == 0, pos_q + 1, limit_q)
    logical = _logical_position(pos_q, limit_q)
    bias_rows = _bias_rows(POSITION_COPIES, stride_copy, max_len, logical)
    own_bias = tl.load(POSITION_COPIES + max_len - 1)
    table = BLOCK_TABLE + req.to(tl.int64) * stride_bt
    acc = tl.zeros([16, BLOCK_DV], dtype=tl.float32)
    full_end = tl.minimum(end, tl.min(row_end, axis=0)) // BLOCK_N * BLOCK_N
    acc = _key_range(
        acc, q, high_q, low_q, bias_rows, pos_q, row_end, begin,
        tl.maximum(begin, full_end), end, end, table, KV, None, K_BOX, V_BOX,
        T_BOX, TS_W, stride_kvb, stride_kvh, stride_kvn, head, own_bias, divisor,
        DQK, DV, BLOCK_DQK, BLOCK_DV, HS, PAGE, NUM_BUCKETS, PRECISION, FAST,
        BLOCK_N, False, True,
    )  # fmt: skip
    d_v = tl.arange(0, BLOCK_DV)
    out = PARTIAL + split * stride_ps + req.to(tl.int64) * stride_pt + head * stride_ph
    tl.store(out + r[:, None] * 0 + d_v[None, :], acc * inv_normalizer,
             mask=first[:, None] & (d_v[None, :] < DV))  # fmt: skip


@triton.jit
def _candidate_keys(
    acc, q, when, bias_limit, limit, full_end, prefix_end, table, KV, K_BOX, V_BOX,
    T_BOX, POSITION_COPIES, TS_W, stride_kvb, stride_kvh, stride_kvn, stride_copy, head,
    max_len, own_bias, divisor, DQK: tl.constexpr, DV: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HS: tl.constexpr,
    PAGE: tl.constexpr, NUM_BUCKETS: tl.constexpr, PRECISION: tl.constexpr,
    FAST: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Candidates' cached keys, each row's time `when` and position-bias
    limit `bias_limit` given per row or once for all (shape [1])."""
    high_q = (when >> 16).to(tl.float32) * 65536.0
    low_q = (when & 0xFFFF).to(tl.float32)
    bias_rows = _bias_rows(POSITION_COPIES, stride_copy, max_len, bias_limit)
    # Own keys are not in the cache (OWN_KEYS off): no query position needed.
    return _key_range(
        acc, q, high_q, low_q, bias_rows, None, limit, 0, full_end, prefix_end,
        prefix_end, table, KV, None, K_BOX, V_BOX, T_BOX, TS_W, stride_kvb, stride_kvh,
        stride_kvn, head, own_bias, divisor, DQK, DV, BLOCK_DQK, BLOCK_DV, HS, PAGE,
        NUM_BUCKETS, PRECISION, FAST, BLOCK_N, False, False,
    )  # fmt: skip


@triton.jit(do_not_specialize=["num_reqs"])  # batch-sized (module doc)
def _candidate_kernel(
    Q, K, V, TIMES, LIMITS, KV, K_BOX, V_BOX, T_BOX, OUT, BLOCK_TABLE,
    CANDIDATE_START,
    POSITION_COPIES, TS_W,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kvb, stride_kvh, stride_kvn, stride_ot, stride_oh, stride_bt,
    stride_copy, num_reqs, max_len, divisor, inv_normalizer,
    DQK: tl.constexpr, DV: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, HS: tl.constexpr,
    PAGE: tl.constexpr, NUM_BUCKETS: tl.constexpr, PRECISION: tl.constexpr,
    FAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SILU_INPUTS: tl.constexpr,
):  # fmt: skip
    """BLOCK_M candidates of one request and one head: their request's cached
    keys before each one's limit, then each one's own key (not cached).

    Candidates scored at the request's time (one time, one limit: the usual
    case) share their bias row: a tile of them computes the bias once per
    key, not once per score. SILU_INPUTS: q, k and v are the projection
    before its SiLU, applied here as each is loaded once, rather than by a
    pass over the whole `[C, 4 * heads * d]` projection before the launch.
    """
    head = tl.program_id(1)
    req, c_start, c_len, local = request_tile(
        CANDIDATE_START, tl.program_id(0), num_reqs, BLOCK_M
    )
    if local * BLOCK_M >= c_len:
        return

    m = local * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < c_len
    row = (c_start + m).to(tl.int64)
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    qk_mask = m_ok[:, None] & (d_qk[None, :] < DQK)
    q = _activated(tl.load(Q + row[:, None] * stride_qt + head * stride_qh
                           + d_qk[None, :], mask=qk_mask, other=0.0),
                   SILU_INPUTS, FAST) * 0.5  # fmt: skip
    when = tl.load(TIMES + row, mask=m_ok, other=0)
    limit = tl.load(LIMITS + row, mask=m_ok, other=0)
    prefix_end = tl.max(limit, axis=0)
    first_limit = tl.min(tl.where(m_ok, limit, prefix_end), axis=0)
    full_end = first_limit // BLOCK_N * BLOCK_N
    table = BLOCK_TABLE + req.to(tl.int64) * stride_bt
    own_bias = tl.load(POSITION_COPIES + max_len - 1)

    # Own key first, as the accumulator's start (its operands then are not
    # live through the loop): distance 0, time difference 0 (bucket 0).
    k = _activated(tl.load(K + row[:, None] * stride_kt + head * stride_kh
                           + d_qk[None, :], mask=qk_mask, other=0.0),
                   SILU_INPUTS, FAST)  # fmt: skip
    v = _activated(tl.load(V + row[:, None] * stride_vt + head * stride_vh
                           + d_v[None, :], mask=m_ok[:, None] & (d_v[None, :] < DV),
                           other=0.0),
                   SILU_INPUTS, FAST)  # fmt: skip
    own = tl.sum(q.to(tl.float32) * k.to(tl.float32), axis=1)
    own = 2.0 * (own + own_bias + tl.load(TS_W))
    acc = (own * tl.sigmoid(own))[:, None] * v.to(tl.float32)
    last_time = tl.max(when, axis=0)
    first_time = tl.min(tl.where(m_ok, when, last_time), axis=0)
    if (first_limit == prefix_end) & (first_time == last_time):
        shared_time = tl.zeros([1], tl.int64) + first_time
        shared_limit = tl.zeros([1], tl.int32) + first_limit
        acc = _candidate_keys(
            acc, q, shared_time, shared_limit, limit, full_end, prefix_end, table, KV,
            K_BOX, V_BOX, T_BOX, POSITION_COPIES, TS_W, stride_kvb, stride_kvh,
            stride_kvn, stride_copy, head, max_len, own_bias, divisor, DQK, DV,
            BLOCK_DQK, BLOCK_DV, HS, PAGE, NUM_BUCKETS, PRECISION, FAST, BLOCK_N,
        )  # fmt: skip
    else:
        acc = _candidate_keys(
            acc, q, when, limit, limit, full_end, prefix_end, table, KV, K_BOX,
            V_BOX, T_BOX, POSITION_COPIES, TS_W, stride_kvb, stride_kvh, stride_kvn,
            stride_copy, head, max_len, own_bias, divisor, DQK, DV, BLOCK_DQK,
            BLOCK_DV, HS, PAGE, NUM_BUCKETS, PRECISION, FAST, BLOCK_N,
        )  # fmt: skip
    out = OUT + row[:, None] * stride_ot + head * stride_oh + d_v[None, :]
    tl.store(out, (acc * inv_normalizer).to(OUT.dtype.element_ty),
             mask=m_ok[:, None] & (d_v[None, :] < DV))  # fmt: skip


@triton.jit(do_not_specialize=["num_tokens"])  # batch-sized (module doc)
def _write_kv_kernel(
    KEY, VALUE, KV, SLOTS, num_tokens, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kvb, stride_kvh, stride_kvn, HEADS: tl.constexpr, HS: tl.constexpr,
    PAGE: tl.constexpr, BLOCK: tl.constexpr, COLUMNS: tl.constexpr,
    TOKENS: tl.constexpr,
):  # fmt: skip
    """TOKENS tokens, all heads: a program per (token, head) moved one row of
    ~0.3 KB and ran the KV write at under half the copy bandwidth."""
    token = tl.program_id(0).to(tl.int64) * TOKENS + tl.arange(0, TOKENS)
    slot = tl.load(SLOTS + token, mask=token < num_tokens, other=-1).to(tl.int64)
    column = tl.arange(0, COLUMNS)
    head, d = column // BLOCK, column % BLOCK
    # Padding tokens (slot -1) have no cache slot.
    ok = (slot >= 0)[:, None] & ((head < HEADS) & (d < HS))[None, :]
    page, offset = slot // PAGE, slot % PAGE
    row = KV + page * stride_kvb + offset * stride_kvn
    out = row[:, None] + head[None, :] * stride_kvh + d[None, :]
    key = tl.load(KEY + token[:, None] * stride_kt + head[None, :] * stride_kh
                  + d[None, :], mask=ok)  # fmt: skip
    value = tl.load(VALUE + token[:, None] * stride_vt + head[None, :] * stride_vh
                    + d[None, :], mask=ok)  # fmt: skip
    tl.store(out, key.to(KV.dtype.element_ty), mask=ok)
    tl.store(out + HS, value.to(KV.dtype.element_ty), mask=ok)


@triton.jit
def _layer_norm_kernel(
    X, U, W, B, OUT, stride_xt, stride_xh, stride_ut, stride_ot, eps,
    HEADS: tl.constexpr, DV: tl.constexpr, BLOCK: tl.constexpr,
    HAS_GATE: tl.constexpr, HAS_AFFINE: tl.constexpr, SILU_GATE: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    ok = i < HEADS * DV
    x = tl.load(
        X + token * stride_xt + (i // DV) * stride_xh + i % DV, mask=ok, other=0.0
    ).to(tl.float32)
    width = HEADS * DV
    mean = tl.sum(x, axis=0) / width
    centred = tl.where(ok, x - mean, 0.0)
    var = tl.sum(centred * centred, axis=0) / width
    y = centred * tl.rsqrt(var + eps)
    if HAS_AFFINE:
        y = y * tl.load(W + i, mask=ok, other=0.0).to(tl.float32)
        y = y + tl.load(B + i, mask=ok, other=0.0).to(tl.float32)
    if HAS_GATE:
        # Exact (not FAST): this kernel is bound by memory, not by SFU ops.
        gate = _activated(tl.load(U + token * stride_ut + i, mask=ok, other=0.0),
                          SILU_GATE, False)  # fmt: skip
        y = y * gate.to(tl.float32)
    tl.store(OUT + token * stride_ot + i, y.to(OUT.dtype.element_ty), mask=ok)


def write_kv_cache_triton(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter `[T, heads, hs]` keys and values into their cache slots (-1: skip).

    No host synchronisation (the PyTorch path's boolean indexing has one), so
    the write can be captured in a CUDA graph with the rest of a decode step.
    """
    num_tokens, heads = slot_mapping.shape[0], key.shape[1]
    if num_tokens == 0:
        return
    hs = kv_cache.shape[-1] // 2
    block = triton.next_power_of_2(hs)
    columns = triton.next_power_of_2(heads) * block
    tokens = max(1, 4096 // columns)  # ~4k elements of K and of V per program
    _write_kv_kernel[(triton.cdiv(num_tokens, tokens),)](
        key, value, kv_cache, slot_mapping, num_tokens, key.stride(0),
        key.stride(1), value.stride(0), value.stride(1), kv_cache.stride(0),
        kv_cache.stride(1), kv_cache.stride(2), HEADS=heads, HS=hs,
        PAGE=kv_cache.shape[2], BLOCK=block, COLUMNS=columns, TOKENS=tokens,
    )  # fmt: skip


def _position_box(
    box: torch.Tensor, block_m: int, block_n: int
) -> TensorDescriptor | None:
    """A TMA descriptor of the position box table (`KernelBiasTables`) for
    tiles of `block_m` x `block_n`, where TMA is (`_has_tma`); None elsewhere:
    every tile then reads its rows' runs. Its rows hold keys, so a tile's box
    starts at row `x`, column 0: a TMA box may start anywhere, but the
    interpreter wants the innermost coordinate 16-byte aligned. Tables
    without a box (`box` None) are how tests run the path of GPUs before
    Hopper."""
    if box is None or block_m > BOX_ROWS or not _has_tma(box):
        return None
    shape, strides = list(box.shape), list(box.stride())
    return TensorDescriptor(box, shape, strides, [block_n, block_m])


def _cache_boxes(
    kv_cache: torch.Tensor, common: dict, block_n: int
) -> tuple[TensorDescriptor | None, ...]:
    """TMA descriptors of the cache's keys, values and key times, one page
    of `block_n` keys a box, where TMA is and every key block is one page;
    Nones elsewhere (the kernels then load through per-element addresses).
    Columns past a part's width read as zeros. The time slots start 16-byte
    aligned only when the key width is a multiple of 8."""
    dqk, page, hs = common["DQK"], common["PAGE"], common["HS"]
    if page % block_n or dqk % 8 or not _has_tma(kv_cache):
        return None, None, None
    strides = list(kv_cache.stride())

    def part(first: int, width: int, block: int) -> TensorDescriptor:
        shape = [*kv_cache.shape[:3], width]
        return TensorDescriptor(
            kv_cache[..., first:], shape, strides, [1, 1, block_n, block]
        )

    return (
        part(0, dqk, common["BLOCK_DQK"]),
        part(hs, common["DV"], common["BLOCK_DV"]),
        part(dqk, TIME_SLOTS, 8),
    )


def _has_tma(tensor: torch.Tensor) -> bool:
    """Hopper and later, and the interpreter (CPU tensors). A host descriptor
    is a kernel parameter: a captured CUDA graph keeps it, and neither the
    cache nor the tables ever move."""
    return not tensor.is_cuda or capability(tensor.device) >= 9


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":  # the Triton interpreter, on CPU tensors
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _prefill_blocks(dqk: int, dv: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the prefill and
    candidate kernels: the best of the H200 sweeps (`benchmarks/kernels.py
    --sections sweep`, `benchmarks/results/h200-20261202c`): with the
    position box, 3 stages ran 4% faster than 2 at 32 x 4096 (188-190 vs
    180-182 TFLOP/s) and 1.5% faster for request-time candidates. 128-row
    tiles have no position box (`BOX_ROWS`); given one (a box of 128 rows,
    `h200-20261203e`), 128 x 64 and 128 x 128 tiles of 8 warps still lost
    (163 and 187 against 189 TFLOP/s at 32 x 4096, causal; 104 and 116
    against 127 at 32 x 1024), so the box stays 64 rows. Head dims above 128
    keep the 32-key, 2-stage tile of earlier sweeps (not re-swept with the
    box)."""
    if max(dqk, dv) > 128:
        return 64, 32, 4, 2
    return 64, 64, 4, 3


DECODE_CONFIG = (64, 4, 2)  # BLOCK_N, warps, stages
# Decode key splits (waves, most): enough programs for `waves` per
# multiprocessor, at most `most` splits; from the batch shape only, never
# sequence lengths, so that a captured CUDA graph replays with the same grid.
DECODE_SPLITS = (8, 64)


def key_splits(programs: int, num_sms: int, waves: int, most: int) -> int:
    """Splits of each program's keys so that `programs` fill the GPU."""
    return max(1, min(most, triton.cdiv(waves * num_sms, max(programs, 1))))


def _common(query: torch.Tensor, kv_cache: torch.Tensor, params, ts_w) -> dict:
    dqk, dv = params.attention_dim, params.value_dim
    return dict(
        # Approximate SFU math (lg2/tanh) for 16-bit models; exact for fp32.
        FAST=query.is_cuda and query.dtype != torch.float32,
        # fp32 models get exact fp32 dots, not TF32 (bf16/fp16 ignore this).
        PRECISION="ieee",
        DQK=dqk,
        DV=dv,
        BLOCK_DQK=_block(dqk),
        BLOCK_DV=_block(dv),
        HS=kv_cache.shape[-1] // 2,
        PAGE=kv_cache.shape[2],
        NUM_BUCKETS=ts_w.numel() - 1,
    )


def hstu_attention_triton(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    pos_w: torch.Tensor,
    ts_w: torch.Tensor,
    params: HSTUAttentionParams,
    output: torch.Tensor,
    max_query_len: int | None = None,
    num_splits: int | None = None,
    prefill_config: tuple[int, int, int, int] | None = None,
    decode_config: tuple[int, int, int] | None = None,
    bias_tables: KernelBiasTables | None = None,
) -> None:
    """Triton HSTU attention; `max_query_len == 1` takes the decode kernel,
    other batches the prefill kernel: on Hopper, where it applies
    (`paged_gluon.supports`), the Gluon one.

    `num_splits` (decode key splits), `prefill_config` (BLOCK_M, BLOCK_N,
    warps, stages: the Triton prefill kernel, even on Hopper) and
    `decode_config` (BLOCK_N, warps, stages) override the defaults;
    `benchmarks/kernels.py --sweep` uses them to tune.
    `bias_tables` are `kernel_bias_tables(pos_w, ts_w)` made ahead of time.
    """
    num_tokens, heads = query.shape[0], query.shape[1]
    num_reqs = seq_lens.shape[0]
    if num_tokens == 0:
        return
    common = _common(query, kv_cache, params, ts_w)
    kv_strides = (kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2))
    tables = bias_tables or kernel_bias_tables(pos_w, ts_w)
    copies, box, ts_w = tables.position, tables.position_box, tables.time
    scalars = (params.max_len, params.time_bucket_divisor, 1.0 / params.normalizer)
    dv = params.value_dim
    if max_query_len == 1 and num_tokens == num_reqs:
        splits = num_splits or key_splits(
            num_tokens * heads, _multiprocessors(query.device), *DECODE_SPLITS
        )
        block_n, warps, stages = decode_config or DECODE_CONFIG
        partial = torch.empty(
            (splits, num_tokens, heads, dv), dtype=torch.float32, device=query.device
        )
        _decode_kernel[(num_tokens, heads, splits)](
            query, kv_cache, *_cache_boxes(kv_cache, common, block_n), partial,
            block_table, seq_lens, copies, ts_w, query.stride(0), query.stride(1),
            *kv_strides, partial.stride(0), partial.stride(1), partial.stride(2),
            block_table.stride(0), copies.stride(0), *scalars, BLOCK_N=block_n,
            **common, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        output[..., :dv] = partial.sum(dim=0)
        return
    if prefill_config is None and paged_gluon.supports(query, kv_cache, params):
        paged_gluon.hstu_prefill_gluon(
            query, kv_cache, block_table, query_start_loc, seq_lens, tables, params,
            output,
        )  # fmt: skip
        return
    block_m, block_n, warps, stages = prefill_config or _prefill_blocks(
        params.attention_dim, dv
    )
    tiles = num_tokens // block_m + num_reqs
    _prefill_kernel[(tiles, heads)](
        query, kv_cache, output, block_table, query_start_loc, seq_lens, copies,
        _position_box(box, block_m, block_n),
        *_cache_boxes(kv_cache, common, block_n), ts_w, query.stride(0),
        query.stride(1), *kv_strides, output.stride(0), output.stride(1),
        block_table.stride(0), copies.stride(0), num_reqs,
        *scalars, BLOCK_M=block_m, BLOCK_N=block_n, KEY_LIMITS=params.key_limits,
        **common, num_warps=warps, num_stages=stages,
    )  # fmt: skip


def candidate_attention_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    times: torch.Tensor,
    limits: torch.Tensor,
    candidate_start: torch.Tensor,
    block_table: torch.Tensor,
    kv_cache: torch.Tensor,
    pos_w: torch.Tensor,
    ts_w: torch.Tensor,
    params: HSTUAttentionParams,
    output: torch.Tensor,
    bias_tables: KernelBiasTables | None = None,
    silu_inputs: bool = False,
    config: tuple[int, int, int, int] | None = None,
) -> None:
    """Triton `paged_torch.candidate_attention_torch`: one launch for all
    candidates of all requests; `config` overrides (BLOCK_M, BLOCK_N, warps,
    stages)."""
    num_candidates, heads = query.shape[0], query.shape[1]
    num_reqs = candidate_start.shape[0] - 1
    if num_candidates == 0:
        return
    common = _common(query, kv_cache, params, ts_w)
    block_m, block_n, warps, stages = config or _prefill_blocks(
        params.attention_dim, params.value_dim
    )
    tables = bias_tables or kernel_bias_tables(pos_w, ts_w)
    copies, ts_w = tables.position, tables.time
    tiles = num_candidates // block_m + num_reqs
    _candidate_kernel[(tiles, heads)](
        query, key, value, times, limits, kv_cache,
        *_cache_boxes(kv_cache, common, block_n), output, block_table,
        candidate_start, copies, ts_w,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1),
        value.stride(0), value.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
        output.stride(0), output.stride(1), block_table.stride(0),
        copies.stride(0), num_reqs, params.max_len, params.time_bucket_divisor,
        1.0 / params.normalizer, BLOCK_M=block_m, BLOCK_N=block_n, **common,
        SILU_INPUTS=silu_inputs, num_warps=warps, num_stages=stages,
    )  # fmt: skip


@torch.library.custom_op("vllm_mtgr::gated_layer_norm", mutates_args=())
def gated_layer_norm(
    attention: torch.Tensor,
    value_dim: int,
    gate: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    silu_gate: bool = False,
) -> torch.Tensor:
    """`gate * (LayerNorm(attention[..., :value_dim]) * weight + bias)` over
    all heads of a token, in one pass; without `gate`, without the affine;
    `silu_gate`: `silu(gate)` instead of `gate`.

    `attention` is `[T, heads, width]` (width >= value_dim, any strides);
    `gate` and the result are `[T, heads * value_dim]`. A custom op, so that
    torch.compile treats the kernel launch as one opaque call.
    """
    tokens, heads = attention.shape[0], attention.shape[1]
    out = attention.new_empty(tokens, heads * value_dim)
    if tokens:
        _layer_norm_kernel[(tokens,)](
            attention, gate, weight, bias, out, attention.stride(0),
            attention.stride(1), 0 if gate is None else gate.stride(0),
            out.stride(0), eps, HEADS=heads, DV=value_dim,
            BLOCK=triton.next_power_of_2(heads * value_dim),
            HAS_GATE=gate is not None, HAS_AFFINE=weight is not None,
            SILU_GATE=silu_gate,
        )  # fmt: skip
    return out


@gated_layer_norm.register_fake
def _(attention, value_dim, gate, eps, weight=None, bias=None, silu_gate=False):
    return attention.new_empty(attention.shape[0], attention.shape[1] * value_dim)
