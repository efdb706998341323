"""Random paged-attention problems and their dense answers, for kernel tests.

A case scatters each request's keys into shuffled cache blocks, so a kernel
must follow the block table, and gives some requests a cached prefix (query
shorter than the sequence), which is how prefix-cache hits and chunked
prefill reach the kernel. Built on `device`, so real shapes fit on a GPU; the
expected output is computed densely in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vllm_mtgr.kernels import HSTUAttentionParams
from vllm_mtgr.kernels.reference import time_buckets
from vllm_mtgr.layout.slots import KEY_LIMIT_SLOTS, TIME_SLOTS, byte_slots, time_slots

QUERY_CHUNK = 1024  # dense reference rows per step, to bound memory


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
    expected: torch.Tensor | None  # [T, H, dv]

    def run(self, attention, *extra, **kwargs) -> torch.Tensor:
        """`attention` over this case; the value part of its output.

        The output buffer starts as NaN so that rows a kernel skips show.
        """
        out = torch.full(
            (*self.query.shape[:2], self.params.cache_head_size),
            float("nan"),
            dtype=self.query.dtype,
            device=self.query.device,
        )
        attention(
            self.query, self.kv_cache, self.block_table, self.query_start_loc,
            self.seq_lens, self.pos_w, self.ts_w, self.params, out, *extra, **kwargs,
        )  # fmt: skip
        return out[..., : self.params.value_dim]


def key_limits_for(
    seq_len: int, context_end: int | None, candidate_start: int | None
) -> torch.Tensor:
    """MTGR-style key limits: a bidirectional context, causal events, candidates.

    Positions < context_end see the whole context; positions >=
    candidate_start are candidates; the rest are causal (limit 0).
    """
    limits = torch.zeros(seq_len, dtype=torch.long)
    if context_end is not None:
        limits[:context_end] = context_end
    if candidate_start is not None:
        limits[candidate_start:] = candidate_start
    return limits


def _dense(q, keys, values, key_times, query_times, pos_q, limits, pos_w, ts_w,
           params):  # fmt: skip
    """Dense HSTU attention straight from the mask rules (no shared helpers)."""
    dqk, n = params.attention_dim, params.max_len
    pos_k = torch.arange(keys.shape[0], device=keys.device)
    out = []
    for lo in range(0, q.shape[0], QUERY_CHUNK):
        rows = slice(lo, lo + QUERY_CHUNK)
        i, j, limit = pos_q[rows, None], pos_k[None, :], limits[rows, None]
        causal = limit == 0
        bidirectional = limit > i
        candidate = ~causal & ~bidirectional
        visible = (
            (causal & (j <= i))
            | (bidirectional & (j < limit))
            | (candidate & ((j < limit) | (j == i)))
        )
        query_position = torch.where(candidate, limit, i)
        distance = torch.where(j == i, 0, j - query_position)
        buckets = time_buckets(
            query_times[rows, None] - key_times[None, :],
            128,
            params.time_bucket_divisor,
        )
        rab = pos_w[(distance + n - 1).clamp(0, 2 * n - 2)] + ts_w[buckets]
        scores = torch.einsum("ihd,jhd->hij", q[rows, :, :dqk], keys) + rab
        attn = F.silu(scores) / params.normalizer * visible
        out.append(torch.einsum("hij,jhd->ihd", attn, values))
    return torch.cat(out)


def _shuffled_cache(lengths, heads, hs, block_size, dtype, randn, g, device):
    """A cache with each sequence's blocks at shuffled places (so a kernel
    must follow the block table), its block table, and each one's blocks."""
    blocks_per_seq = [-(-n // block_size) for n in lengths]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=g).to(device)
    kv_cache = randn(num_blocks, heads, block_size, 2 * hs).to(dtype)
    block_table = torch.zeros(
        len(lengths), max(blocks_per_seq), dtype=torch.int32, device=device
    )
    blocks, used = [], 0
    for r, count in enumerate(blocks_per_seq):
        blocks.append(order[used : used + count])
        block_table[r, :count] = blocks[-1].to(torch.int32)
        used += count
    return kv_cache, block_table, blocks


def make_case(
    seq_lens: list[int],
    query_lens: list[int],
    heads: int = 2,
    dqk: int = 16,
    dv: int = 24,
    block_size: int = 16,
    max_len: int = 128,
    dtype: torch.dtype = torch.float32,
    context_ends: list[int | None] | None = None,
    candidate_starts: list[int | None] | None = None,
    generator: torch.Generator | None = None,
    device: str = "cpu",
    with_expected: bool = True,
    key_limits: bool = True,
) -> AttentionCase:
    g = generator or torch.Generator().manual_seed(0)
    max_len = max(max_len, max(seq_lens))
    params = HSTUAttentionParams(dqk, dv, max_len, float(max_len), 0.301, key_limits)
    hs = params.cache_head_size

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    kv_cache, block_table, seq_blocks = _shuffled_cache(
        seq_lens, heads, hs, block_size, dtype, randn, g, device
    )
    pos_w = randn(2 * max_len - 1)
    ts_w = randn(129)
    queries, expected, starts = [], [], [0]
    for r, (seq_len, q_len) in enumerate(zip(seq_lens, query_lens, strict=True)):
        blocks = seq_blocks[r]
        keys, values = randn(seq_len, heads, dqk), randn(seq_len, heads, dv)
        gaps = torch.randint(0, 10**6, (seq_len,), generator=g)
        base = torch.randint(0, 2**30, (1,), generator=g)
        key_times = (base + gaps.sort().values).to(device)
        query_times = torch.cat([key_times[1:], key_times[-1:] + 50])
        slots = torch.zeros(seq_len, heads, 2 * hs, device=device)
        slots[..., :dqk] = keys
        slots[..., dqk : dqk + TIME_SLOTS] = time_slots(key_times, torch.float32)[
            :, None
        ]
        slots[..., hs : hs + dv] = values
        positions = torch.arange(seq_len, device=device)
        kv_cache[blocks[positions // block_size], :, positions % block_size] = slots.to(
            dtype
        )
        limits = key_limits_for(
            seq_len,
            context_ends[r] if context_ends else None,
            candidate_starts[r] if candidate_starts else None,
        ).to(device)[seq_len - q_len :]
        q = randn(q_len, heads, hs)
        q[..., dqk : dqk + TIME_SLOTS] = time_slots(
            query_times[seq_len - q_len :], torch.float32
        )[:, None, :]
        q[..., dqk + TIME_SLOTS : dqk + TIME_SLOTS + KEY_LIMIT_SLOTS] = byte_slots(
            limits, torch.float32, KEY_LIMIT_SLOTS
        )[:, None, :]
        q = q.to(dtype)
        queries.append(q)
        if with_expected:
            cached = kv_cache[
                blocks[positions // block_size], :, positions % block_size
            ]
            expected.append(
                _dense(
                    q.float(),
                    cached[..., :dqk].float(),
                    cached[..., hs : hs + dv].float(),
                    key_times,
                    query_times[seq_len - q_len :],
                    positions[seq_len - q_len :],
                    limits,
                    pos_w,
                    ts_w,
                    params,
                )
            )
        starts.append(starts[-1] + q_len)
    return AttentionCase(
        query=torch.cat(queries),
        kv_cache=kv_cache,
        block_table=block_table,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        pos_w=pos_w,
        ts_w=ts_w,
        params=params,
        expected=torch.cat(expected) if with_expected else None,
    )


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    got, expected = got.double(), expected.double()
    return float((got - expected).norm() / expected.norm())


@dataclass
class CandidateCase:
    """Ranking candidates (not tokens) over paged histories, with the answer."""

    query: torch.Tensor  # [C, H, dqk]
    key: torch.Tensor  # [C, H, dqk]
    value: torch.Tensor  # [C, H, dv]
    times: torch.Tensor  # int64 [C]
    limits: torch.Tensor  # int32 [C]
    candidate_start: torch.Tensor  # int32 [R + 1]
    block_table: torch.Tensor
    kv_cache: torch.Tensor
    pos_w: torch.Tensor
    ts_w: torch.Tensor
    params: HSTUAttentionParams
    expected: torch.Tensor | None  # [C, H, dv]

    def run(self, attention, **kwargs) -> torch.Tensor:
        out = torch.full_like(self.value, float("nan"))
        attention(
            self.query, self.key, self.value, self.times, self.limits,
            self.candidate_start, self.block_table, self.kv_cache, self.pos_w,
            self.ts_w, self.params, out, **kwargs,
        )  # fmt: skip
        return out


def make_candidate_case(
    history_lens: list[int],
    candidate_counts: list[int],
    heads: int = 2,
    dqk: int = 16,
    dv: int = 24,
    block_size: int = 16,
    max_len: int = 128,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    device: str = "cpu",
    with_expected: bool = True,
    at_request_time: bool = False,
    pre_activation: bool = False,
) -> CandidateCase:
    """Histories in shuffled cache blocks and candidates whose limits fall
    anywhere in their history (as real-time events before a candidate's time
    do), or, `at_request_time`, candidates that all see the whole history at
    one time after it (a request scored now). The answer: dense attention
    over the history followed by the candidates, each a key of its own,
    under the MTGR mask rules (`_dense`). `pre_activation`: the case's
    query, key and value are taken before their SiLU (`silu_inputs`)."""
    g = generator or torch.Generator().manual_seed(0)
    max_len = max(max_len, max(history_lens) + 1)
    params = HSTUAttentionParams(dqk, dv, max_len, float(max_len), 0.301)
    hs = params.cache_head_size

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    kv_cache, block_table, history_blocks = _shuffled_cache(
        history_lens, heads, hs, block_size, dtype, randn, g, device
    )
    pos_w, ts_w = randn(2 * max_len - 1), randn(129)
    parts: dict[str, list[torch.Tensor]] = {
        name: [] for name in ("query", "key", "value", "times", "limits", "expected")
    }
    starts = [0]
    for r, (length, count) in enumerate(
        zip(history_lens, candidate_counts, strict=True)
    ):
        blocks = history_blocks[r]
        gaps = torch.randint(0, 10**6, (length,), generator=g)
        key_times = (torch.randint(0, 2**30, (1,), generator=g) + gaps.cumsum(0)).to(
            device
        )
        slots = torch.zeros(length, heads, 2 * hs, device=device)
        slots[..., :dqk] = randn(length, heads, dqk)
        slots[..., dqk : dqk + TIME_SLOTS] = time_slots(key_times, torch.float32)[
            :, None
        ]
        slots[..., hs : hs + dv] = randn(length, heads, dv)
        positions = torch.arange(length, device=device)
        where = (blocks[positions // block_size], slice(None), positions % block_size)
        kv_cache[where] = slots.to(dtype)
        raw = [randn(count, heads, d).to(dtype) for d in (dqk, dqk, dv)]
        if pre_activation:  # rounded as the projection's SiLU output is
            q, k, v = (F.silu(x.float()).to(dtype) for x in raw)
        else:
            q, k, v = raw
        limits = torch.randint(1, length + 1, (count,), generator=g).to(device)
        jitter = torch.randint(-(10**6), 10**6, (count,), generator=g)
        if at_request_time:
            limits = torch.full_like(limits, length)
            jitter = torch.full_like(jitter, int(jitter[0].abs()))
        times = key_times[-1] + jitter.to(device)
        for name, value in zip(
            ("query", "key", "value", "times", "limits"),
            (*raw, times.to(device), limits.to(torch.int32)),
            strict=True,
        ):
            parts[name].append(value)
        if with_expected:
            cached = kv_cache[where]
            queries = torch.zeros(length + count, heads, hs, device=device)
            queries[length:, :, :dqk] = q.float()
            parts["expected"].append(
                _dense(
                    queries,
                    torch.cat([cached[..., :dqk].float(), k.float()]),
                    torch.cat([cached[..., hs : hs + dv].float(), v.float()]),
                    torch.cat([key_times, times.to(device)]),
                    torch.cat([key_times, times.to(device)]),
                    torch.arange(length + count, device=device),
                    torch.cat([torch.zeros(length, device=device), limits]).long(),
                    pos_w,
                    ts_w,
                    params,
                )[length:]
            )
        starts.append(starts[-1] + count)
    return CandidateCase(
        **{name: torch.cat(parts[name]) for name in parts if name != "expected"},
        candidate_start=torch.tensor(starts, dtype=torch.int32, device=device),
        block_table=block_table,
        kv_cache=kv_cache,
        pos_w=pos_w,
        ts_w=ts_w,
        params=params,
        expected=torch.cat(parts["expected"]) if with_expected else None,
    )
