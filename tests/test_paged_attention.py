"""The CPU paged-attention path equals dense HSTU attention on random inputs."""

from __future__ import annotations

import random

import pytest
import torch
from attention_cases import make_candidate_case, make_case, relative_error

from vllm_mtgr.kernels import candidate_attention, hstu_attention, write_kv_cache

CASES = {
    "ragged_prefill": ([37, 5, 64, 1], [37, 5, 64, 1]),
    "decode": ([17, 33, 2], [1, 1, 1]),
    "cached_prefix_and_chunks": ([48, 90, 31], [16, 40, 15]),
    "block_boundaries": ([16, 32, 15, 17], [16, 1, 15, 2]),
}
# MTGR masks: (seq, query, bidirectional context end, candidate start)
MTGR_CASES = {
    "context_events_candidates": ([60, 45], [60, 45], [20, 10], [50, 30]),
    "candidates_after_cached_history": ([70], [25], [30], [45]),
    "context_only": ([33], [33], [33], [None]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_dense_reference(name):
    seq_lens, query_lens = CASES[name]
    seed = random.randrange(2**31)  # fresh inputs every run; reported on failure
    case = make_case(
        seq_lens, query_lens, generator=torch.Generator().manual_seed(seed)
    )
    got = case.run(hstu_attention)
    assert not got.isnan().any(), f"seed {seed}"
    assert relative_error(got, case.expected) < 1e-5, f"seed {seed}"


@pytest.mark.parametrize("name", sorted(MTGR_CASES))
def test_mtgr_masks(name):
    seq_lens, query_lens, contexts, candidates = MTGR_CASES[name]
    seed = random.randrange(2**31)
    case = make_case(
        seq_lens,
        query_lens,
        context_ends=contexts,
        candidate_starts=candidates,
        generator=torch.Generator().manual_seed(seed),
    )
    got = case.run(hstu_attention)
    assert relative_error(got, case.expected) < 1e-5, f"seed {seed}"


def test_kv_cache_write_follows_the_slot_mapping():
    cache = torch.zeros(4, 2, 16, 10)
    key = torch.randn(3, 2, 5)
    value = torch.randn(3, 2, 5)
    write_kv_cache(key, value, cache, torch.tensor([17, 3, -1]))
    assert torch.equal(cache[1, :, 1, :5], key[0])
    assert torch.equal(cache[0, :, 3, 5:], value[1])
    assert cache.count_nonzero() == 2 * 2 * 10


@pytest.mark.parametrize(
    ("history_lens", "counts"),
    [([40, 7, 100], [9, 1, 30]), ([16, 33], [5, 64]), ([1], [3])],
    ids=["ragged", "block_boundaries", "one_key"],
)
@pytest.mark.parametrize("silu_inputs", [False, True], ids=["activated", "raw"])
def test_candidates_attend_to_their_history_and_themselves(
    history_lens, counts, silu_inputs
):
    seed = random.randrange(2**31)
    case = make_candidate_case(
        history_lens,
        counts,
        generator=torch.Generator().manual_seed(seed),
        pre_activation=silu_inputs,
    )
    got = case.run(candidate_attention, silu_inputs=silu_inputs)
    assert not got.isnan().any(), f"seed {seed}"
    assert relative_error(got, case.expected) < 1e-5, f"seed {seed}"
