"""Random paged-attention problems and their dense answers, for kernel tests.

A case scatters each request's keys into shuffled cache blocks, so a kernel
must follow the block table, and gives some requests a cached prefix (query
shorter than the sequence), which is how prefix-cache hits and chunked
prefill reach the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from vllm_mtgr.kernels import HSTUAttentionParams
from vllm_mtgr.kernels.reference import relative_bias

from vllm_mtgr.events import TIME_SLOTS, time_slots


@dataclass
class AttentionCase:
    query: torch.Tensor  # [T, H, hs]
    kv_cache: torch.Tensor  # [blocks, H, block_size, 2 * hs]
    block_table: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    pos_w: torch.Tensor
    ts_w: torch.Tensor
    params: HSTUAttentionParams
    expected: torch.Tensor  # [T, H, dv]
    candidate_starts: torch.Tensor | None = None


def make_case(
    seq_lens: list[int],
    query_lens: list[int],
    heads: int = 2,
    dqk: int = 16,
    dv: int = 24,
    block_size: int = 16,
    max_len: int = 128,
    dtype: torch.dtype = torch.float32,
    candidate_starts: list[int] | None = None,
    generator: torch.Generator | None = None,
    device: str = "cpu",
) -> AttentionCase:
    g = generator or torch.Generator().manual_seed(0)
    params = HSTUAttentionParams(dqk, dv, max_len, float(max_len), 0.301)
    hs = params.cache_head_size
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=g)
    kv_cache = torch.randn(num_blocks, heads, block_size, 2 * hs, generator=g)
    block_table = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    pos_w = torch.randn(2 * max_len - 1, generator=g)
    ts_w = torch.randn(129, generator=g)
    queries, expected, starts, used = [], [], [0], 0
    for r, (seq_len, q_len) in enumerate(zip(seq_lens, query_lens, strict=True)):
        blocks = order[used : used + blocks_per_seq[r]]
        used += blocks_per_seq[r]
        block_table[r, : len(blocks)] = blocks.to(torch.int32)
        keys = torch.randn(seq_len, heads, dqk, generator=g)
        values = torch.randn(seq_len, heads, dv, generator=g)
        key_times = (
            torch.randint(0, 2**31 - 1, (1,), generator=g)
            + torch.randint(0, 10**6, (seq_len,), generator=g).sort().values
        )
        key_times = key_times.clamp(max=2**31 - 1)
        query_times = torch.cat([key_times[1:], key_times[-1:] + 50])
        slots = torch.zeros(seq_len, heads, 2 * hs)
        slots[..., :dqk] = keys
        slots[..., dqk : dqk + TIME_SLOTS] = time_slots(key_times, torch.float32)[
            :, None, :
        ]
        slots[..., hs : hs + dv] = values
        for pos in range(seq_len):
            block, offset = divmod(pos, block_size)
            kv_cache[blocks[block], :, offset] = slots[pos]
        q = torch.randn(q_len, heads, hs, generator=g)
        q[..., dqk : dqk + TIME_SLOTS] = time_slots(
            query_times[seq_len - q_len :], torch.float32
        )[:, None, :]
        queries.append(q)
        pos_k = torch.arange(seq_len)
        pos_q = pos_k[seq_len - q_len :]
        rab = relative_bias(
            pos_q, pos_k, query_times[pos_q], key_times, pos_w, ts_w, max_len, 0.301
        )
        scores = torch.einsum("ihd,jhd->hij", q[..., :dqk], keys) + rab
        visible = pos_k[None] <= pos_q[:, None]
        if candidate_starts is not None and candidate_starts[r] < seq_len:
            c = candidate_starts[r]
            visible &= (
                (pos_q[:, None] < c)
                | (pos_k[None] < c)
                | (pos_k[None] == pos_q[:, None])
            )
        attn = F.silu(scores) / max_len * visible
        expected.append(torch.einsum("hij,jhd->ihd", attn, values))
        starts.append(starts[-1] + q_len)
    return AttentionCase(
        query=torch.cat(queries).to(device, dtype),
        kv_cache=kv_cache.to(device, dtype),
        block_table=block_table.to(device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        pos_w=pos_w.to(device),
        ts_w=ts_w.to(device),
        params=params,
        expected=torch.cat(expected).to(device),
        candidate_starts=(
            torch.tensor(candidate_starts, dtype=torch.int32, device=device)
            if candidate_starts is not None
            else None
        ),
    )


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.double(), expected.double()
    return float((got - expected).norm() / expected.norm())
