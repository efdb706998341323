"""The per-event side data: validation, chunking, position rows, time slots."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from vllm_mtgr.layout.positions import (
    MAX_TIMESTAMP,
    decode_delta,
    decode_position_rows,
    encode_position_rows,
)
from vllm_mtgr.layout.slots import time_slots, times_from_slots
from vllm_mtgr.multimodal.events import (
    EVENT_CHUNK_TOKENS,
    LONG_CHUNK_TOKENS,
    chunk_bounds,
    chunk_events,
)
from vllm_mtgr.requests.events import EventsError, next_event_times, parse_events


def test_query_time_is_the_next_event_then_the_request():
    def next_times(events):
        times = np.asarray(events.timestamps, dtype=np.int64)
        return tuple(next_event_times(times, events.request_timestamp).tolist())

    events = parse_events(3, [10, 20, 35], request_timestamp=99)
    assert next_times(events) == (20, 35, 99)
    assert next_times(parse_events(2, [5, 6])) == (6, 6)


def test_chunks_cover_the_history_and_carry_the_next_time():
    n = 2 * EVENT_CHUNK_TOKENS + 8
    items = list(range(1, n + 1))
    times = list(range(100, 100 + n))
    chunks = chunk_events(items, parse_events(n, times, request_timestamp=10**6))
    assert [c.offset for c in chunks] == [0, EVENT_CHUNK_TOKENS, 2 * EVENT_CHUNK_TOKENS]
    assert [len(c.item_ids) for c in chunks] == [EVENT_CHUNK_TOKENS] * 2 + [8]
    assert chunks[0].query_times[-1] == times[EVENT_CHUNK_TOKENS]
    assert chunks[-1].query_times[-1] == 10**6
    assert np.concatenate([c.item_ids for c in chunks]).tolist() == items


def test_long_histories_are_cut_at_long_chunks_then_short_ones():
    long, short = LONG_CHUNK_TOKENS, EVENT_CHUNK_TOKENS
    n = 2 * long + short + 5
    assert chunk_bounds(n) == [0, long, 2 * long, 2 * long + short, n]
    # The last event is never in a long chunk.
    assert chunk_bounds(2 * long) == [0, *range(long, 2 * long + 1, short)]
    items = list(range(1, n + 1))
    chunks = chunk_events(items, parse_events(n, list(range(n))))
    assert [len(c.item_ids) for c in chunks] == [long, long, short, 5]
    assert chunks[0].query_times[-1] == long  # the next chunk's first time
    assert np.concatenate([c.item_ids for c in chunks]).tolist() == items


def test_a_grown_history_keeps_its_chunks_before_its_last_one():
    """Growing n -> m events keeps every chunk of n but the one holding its
    last event (whose last query time changes): at most a short chunk is
    recomputed, or a new long chunk and what follows it, where m has one more
    long chunk than n."""
    long, short = LONG_CHUNK_TOKENS, EVENT_CHUNK_TOKENS
    for n in range(1, 3 * long):
        old = chunk_bounds(n)
        old_chunks = set(pairwise(old))
        for m in (n + 1, n + 7, n + short, n + long + 3):
            new = chunk_bounds(m)
            assert new[0] == 0 and new[-1] == m
            assert all(0 < b - a <= long for a, b in pairwise(new))
            kept = max(
                (
                    end
                    for start, end in pairwise(new)
                    if end < n and (start, end) in old_chunks
                ),
                default=0,
            )
            # Every new chunk below `kept` is an old one: a prefix hit.
            assert all((a, b) in old_chunks for a, b in pairwise(new) if b <= kept)
            longs = [b - a for a, b in pairwise(new)].count(long)
            crosses = longs > [b - a for a, b in pairwise(old)].count(long)
            assert n - kept <= (long + short if crosses else short), (n, m, kept)


def test_position_rows_round_trip_for_prompt_and_generated_tokens():
    rng = np.random.default_rng(0)
    keys = np.sort(rng.integers(0, MAX_TIMESTAMP, 50))
    queries = np.append(keys[1:], MAX_TIMESTAMP)
    rows = torch.from_numpy(encode_position_rows(50, keys, queries))
    positions, key_times, query_times = decode_position_rows(rows)
    assert positions.tolist() == list(range(50))
    assert key_times.tolist() == keys.tolist()
    assert query_times.tolist() == queries.tolist()
    # Generated tokens: vLLM adds one delta to every row.
    request_time = 1_700_000_000
    decode_rows = torch.full((3, 4), decode_delta(request_time)) + torch.arange(50, 54)
    positions, key_times, query_times = decode_position_rows(decode_rows)
    assert positions.tolist() == [50, 51, 52, 53]
    assert key_times.tolist() == query_times.tolist() == [request_time] * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_time_slots_are_exact_in_every_cache_dtype(dtype):
    times = torch.randint(0, MAX_TIMESTAMP, (1000,))
    times[0], times[1] = 0, MAX_TIMESTAMP
    assert torch.equal(times_from_slots(time_slots(times, dtype)), times)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((3, [1, 2]), "`timestamps` has 2 values but the history has 3"),
        ((2, "12"), "`timestamps` must be a list of integers"),
        ((2, [1, True]), "`timestamps[1]` must be an integer"),
        ((1, [MAX_TIMESTAMP + 1]), "outside [0, 2147483647]"),
        ((2, [1, 2**70]), "`timestamps[1]` = 1180591620717411303424 does not fit"),
        ((2, [1.0, 2]), "`timestamps[0]` must be an integer, got float"),
        ((1, [1], -5), "`request_timestamp` = -5"),
        ((2, [1, 2], None, [0]), "no action types"),
    ],
)
def test_bad_events_name_the_field(args, message):
    with pytest.raises(EventsError) as raised:
        parse_events(*args)
    assert message in str(raised.value)


def test_actions_are_checked_against_the_model():
    events = parse_events(2, [1, 2], None, [0, 3], num_action_types=4)
    assert events.actions.tolist() == [0, 3]
    with pytest.raises(EventsError, match=r"`actions\[1\]` = 4 is outside \[0, 4\)"):
        parse_events(2, [1, 2], None, [0, 4], num_action_types=4)
    with pytest.raises(EventsError, match="`actions` has 1 values"):
        parse_events(2, [1, 2], None, [0], num_action_types=4)
