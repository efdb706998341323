"""The CPU paged-attention path equals dense HSTU attention on random inputs."""

from __future__ import annotations

import random

import pytest
import torch
from attention_cases import make_case, relative_error
from vllm_mtgr.kernels import hstu_attention, write_kv_cache

CASES = {
    "ragged_prefill": ([37, 5, 64, 1], [37, 5, 64, 1]),
    "decode": ([17, 33, 2], [1, 1, 1]),
    "cached_prefix_and_chunks": ([48, 90, 31], [16, 40, 15]),
    "block_boundaries": ([16, 32, 15, 17], [16, 1, 15, 2]),
}


def _run(case) -> torch.Tensor:
    out = torch.full(
        (case.query.shape[0], case.query.shape[1], case.params.cache_head_size),
        float("nan"),
    )
    hstu_attention(
        case.query,
        case.kv_cache,
        case.block_table,
        case.query_start_loc,
        case.seq_lens,
        case.pos_w,
        case.ts_w,
        case.params,
        out,
        case.candidate_starts,
    )
    return out[..., : case.params.value_dim]


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_dense_reference(name):
    seq_lens, query_lens = CASES[name]
    seed = random.randrange(2**31)  # fresh inputs every run; reported on failure
    case = make_case(
        seq_lens, query_lens, generator=torch.Generator().manual_seed(seed)
    )
    got = _run(case)
    assert not got.isnan().any(), f"seed {seed}"
    assert relative_error(got, case.expected) < 1e-5, f"seed {seed}"


def test_candidates_see_the_history_and_themselves_only():
    generator = torch.Generator().manual_seed(7)
    case = make_case([40, 25], [40, 25], candidate_starts=[30, 20], generator=generator)
    assert relative_error(_run(case), case.expected) < 1e-5


def test_kv_cache_write_follows_the_slot_mapping():
    cache = torch.zeros(4, 2, 16, 10)
    key = torch.randn(3, 2, 5)
    value = torch.randn(3, 2, 5)
    write_kv_cache(key, value, cache, torch.tensor([17, 3, -1]))
    assert torch.equal(cache[1, :, 1, :5], key[0])
    assert torch.equal(cache[0, :, 3, 5:], value[1])
    assert cache.count_nonzero() == 2 * 2 * 10
