"""HSTU attention over vLLM's paged KV cache, in PyTorch (the CPU path).

Layout contract shared with the Triton kernels (`kernels.paged_triton`):

* `kv_cache` is the layer's logical `[num_blocks, heads, block_size, 2 * hs]`
  view (any physical strides): key in `[..., :hs]`, value in `[..., hs:]`.
* A key slot holds `k[:attention_dim]`, then `TIME_SLOTS` byte values of the
  key's timestamp (see `vllm_mtgr.layout.slots`), then padding. A query
  has the same layout with its query time, followed by `KEY_LIMIT_SLOTS` byte
  values of its key limit. A value slot holds `v[:value_dim]`.
* Query token t of request r sits at position
  `seq_lens[r] - query_len[r] + (t - query_start_loc[r])`; the request's keys
  are positions `0 .. seq_lens[r] - 1`, read through `block_table[r]`.

Masks, from each query's key limit `L` (position i, key j):
* `L == 0`: causal, j <= i (HSTU retrieval, MTGR's real-time history).
* `L > i`: a bidirectional prefix, j < L (MTGR's profile + long history).
* `0 < L <= i`: a candidate, j < L or j == i. Candidates sit at logical
  position L, whatever their order, so reordering them changes nothing.
The relative-position bias uses the logical query position; a query's own
key is always at distance 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vllm_mtgr.layout.slots import KEY_LIMIT_SLOTS, TIME_SLOTS, times_from_slots

from .reference import time_buckets

SLOT_ALIGNMENT = 8  # elements: keeps every K/V row 16-byte aligned in bf16


@dataclass(frozen=True)
class HSTUAttentionParams:
    """Shapes and constants of one HSTU attention layer."""

    attention_dim: int
    value_dim: int
    max_len: int
    normalizer: float
    time_bucket_divisor: float
    # Whether queries may carry key limits (MTGR ranking masks). Without, every
    # query's limit is 0 (causal) and the GPU prefill kernel is compiled for
    # causal rows only (`paged_triton._prefill_kernel`).
    key_limits: bool = True

    @property
    def cache_head_size(self) -> int:
        """Per-head slot width of the cache: q/k + time + key limit, or v."""
        used = max(self.attention_dim + TIME_SLOTS + KEY_LIMIT_SLOTS, self.value_dim)
        return -(-used // SLOT_ALIGNMENT) * SLOT_ALIGNMENT


def attention_mask_and_distance(
    pos_q: torch.Tensor, pos_k: torch.Tensor, key_limits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible `[Tq, Tk]`, relative distance j - i `[Tq, Tk]`) for key limits."""
    own = pos_k[None, :] == pos_q[:, None]
    limit = key_limits[:, None]
    visible = own | torch.where(
        limit == 0, pos_k[None, :] <= pos_q[:, None], pos_k[None, :] < limit
    )
    candidate = (key_limits > 0) & (key_limits <= pos_q)
    logical_q = torch.where(candidate, key_limits, pos_q)
    distance = torch.where(own, 0, pos_k[None, :] - logical_q[:, None])
    return visible, distance


def gather_request_kv(
    kv_cache: torch.Tensor, block_table_row: torch.Tensor, seq_len: int
) -> torch.Tensor:
    """One request's `[seq_len, heads, 2 * hs]` slots, in position order."""
    block_size = kv_cache.shape[2]
    num_blocks = -(-seq_len // block_size)
    pages = kv_cache[block_table_row[:num_blocks].long()]
    heads, width = pages.shape[1], pages.shape[3]
    pages = pages.permute(0, 2, 1, 3).reshape(num_blocks * block_size, heads, width)
    return pages[:seq_len]


# The Triton kernels read a row's position bias for a whole key block past
# the table's end (for keys they then mask): pad by more than a block.
POSITION_PAD = 128
# Rows of the position box: tiles of at most this many query rows read it.
BOX_ROWS = 64


class KernelBiasTables(NamedTuple):
    """The bias tables as the Triton kernels read them: float32 (no
    conversion per score) and halved, exactly (see `score_math.silu_half`;
    halving in the kernel would cost an instruction per score).

    `position`: four copies of the table, copy s shifted left by s entries
    and padded with its last entry, so that any row's run starts 16-byte
    aligned in one copy. `position_box`: `[x, i] = pos_w[x - i]` (clamped),
    so that the bias of query rows at consecutive positions against a key
    block, a Toeplitz tile, is one rectangle of it, which a TMA box loads
    (see `paged_triton`); `(2N + 128) x BOX_ROWS` floats, 4.2 MB a layer at
    N = 8192 (`mtgr-8b`: 135 MB in all, under 1% of its weights). `time`: the
    time table. `position_box_bf16`: the box in bfloat16, as the Hopper
    prefill kernel (`paged_gluon`) reads it: half the shared memory of a
    float32 box, so that two of its CTAs fit on an SM (a 16-bit model's
    scores round to 16 bits before their SiLU anyway).
    """

    position: torch.Tensor
    position_box: torch.Tensor
    time: torch.Tensor
    position_box_bf16: torch.Tensor


def kernel_bias_tables(pos_w: torch.Tensor, ts_w: torch.Tensor) -> KernelBiasTables:
    """`KernelBiasTables` of a layer's position and time tables."""
    half = 0.5 * pos_w.float()
    last = half.numel() - 1
    length = -(-(half.numel() + POSITION_PAD) // 16) * 16
    index = torch.arange(4)[:, None] + torch.arange(length)[None, :]
    copies = half[index.clamp(max=last).to(half.device)]
    diagonal = torch.arange(length)[:, None] - torch.arange(BOX_ROWS)[None, :]
    box = half[diagonal.clamp(0, last).to(half.device)]
    return KernelBiasTables(copies, box, 0.5 * ts_w.float(), box.bfloat16())


def hstu_paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    pos_w: torch.Tensor,
    ts_w: torch.Tensor,
    params: HSTUAttentionParams,
    output: torch.Tensor,
) -> None:
    """Write each query token's `[heads, value_dim]` attention into `output`."""
    dqk, dv, n = params.attention_dim, params.value_dim, params.max_len
    hs = kv_cache.shape[-1] // 2
    starts = query_start_loc.tolist()
    for r, seq_len in enumerate(seq_lens.tolist()):
        q_lo, q_hi = starts[r], starts[r + 1]
        if q_hi == q_lo:
            continue
        slots = gather_request_kv(kv_cache, block_table[r], seq_len).float()
        keys = slots[..., :dqk]
        values = slots[..., hs : hs + dv]
        key_times = times_from_slots(slots[:, 0, dqk : dqk + TIME_SLOTS])
        q = query[q_lo:q_hi].float()
        query_times = times_from_slots(q[:, 0, dqk : dqk + TIME_SLOTS])
        limit_slots = q[:, 0, dqk + TIME_SLOTS : dqk + TIME_SLOTS + KEY_LIMIT_SLOTS]
        pos_k = torch.arange(seq_len)
        pos_q = pos_k[seq_len - (q_hi - q_lo) :]
        visible, distance = attention_mask_and_distance(
            pos_q, pos_k, times_from_slots(limit_slots)
        )
        buckets = time_buckets(
            query_times[:, None] - key_times[None, :],
            ts_w.numel() - 1,
            params.time_bucket_divisor,
        )
        rab = (
            pos_w.float()[(distance + n - 1).clamp(0, 2 * n - 2)]
            + ts_w.float()[buckets]
        )
        scores = torch.einsum("ihd,jhd->hij", q[..., :dqk], keys) + rab[None]
        attn = F.silu(scores) / params.normalizer * visible[None]
        out = torch.einsum("hij,jhd->ihd", attn, values)
        output[q_lo:q_hi, :, :dv] = out.to(output.dtype)


def candidate_attention_torch(
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
    silu_inputs: bool = False,
) -> None:
    """Candidates' attention: each over its request's cached keys and itself.

    Candidates of request r are rows `candidate_start[r] : candidate_start[r+1]`
    of `query`/`key`/`value` (`[C, heads, dqk or dv]`, no slots); the request's
    history is in the cache through `block_table[r]`. A candidate sees the
    keys before its `limit` (its logical position) and its own key, which is
    not in the cache; its query and key time is `times`. `silu_inputs`:
    query, key and value are taken before their SiLU.
    """
    if silu_inputs:
        query, key, value = (F.silu(x.float()).to(x.dtype) for x in (query, key, value))
    dqk, dv, n = params.attention_dim, params.value_dim, params.max_len
    hs = kv_cache.shape[-1] // 2
    starts = candidate_start.tolist()
    # Its own key: distance 0, time difference 0 (bucket 0).
    own_bias = pos_w.float()[n - 1] + ts_w.float()[0]
    for r in range(len(starts) - 1):
        lo, hi = starts[r], starts[r + 1]
        if hi == lo:
            continue
        q = query[lo:hi].float()
        limit = limits[lo:hi].long()
        seen = int(limit.max())
        slots = gather_request_kv(kv_cache, block_table[r], seen).float()
        keys = slots[..., :dqk]
        values = slots[..., hs : hs + dv]
        key_times = times_from_slots(slots[:, 0, dqk : dqk + TIME_SLOTS])
        pos_k = torch.arange(seen)
        visible = pos_k[None, :] < limit[:, None]
        distance = pos_k[None, :] - limit[:, None]
        buckets = time_buckets(
            times[lo:hi, None] - key_times[None, :],
            ts_w.numel() - 1,
            params.time_bucket_divisor,
        )
        rab = (
            pos_w.float()[(distance + n - 1).clamp(0, 2 * n - 2)]
            + ts_w.float()[buckets]
        )
        scores = torch.einsum("ihd,jhd->hij", q, keys) + rab[None]
        attn = F.silu(scores) / params.normalizer * visible[None]
        out = torch.einsum("hij,jhd->ihd", attn, values)
        own = (q * key[lo:hi].float()).sum(-1) + own_bias
        out += (F.silu(own) / params.normalizer)[..., None] * value[lo:hi].float()
        output[lo:hi] = out.to(output.dtype)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Scatter `[T, heads, hs]` keys and values into their cache slots."""
    block_size = kv_cache.shape[2]
    hs = kv_cache.shape[-1] // 2
    num_tokens = slot_mapping.shape[0]
    slots = slot_mapping.long()
    valid = slots >= 0
    blocks = (slots // block_size)[valid]
    offsets = (slots % block_size)[valid]
    kv_cache[blocks, :, offsets, :hs] = key[:num_tokens][valid].to(kv_cache.dtype)
    kv_cache[blocks, :, offsets, hs:] = value[:num_tokens][valid].to(kv_cache.dtype)
