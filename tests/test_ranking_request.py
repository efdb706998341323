"""Validation of ranking requests: cross features take a vectorised fast path
for well-formed rows and name the first bad row otherwise."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import TINY_RANKING
from ranking_cases import random_request

from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.errors import RequestError
from vllm_mtgr.requests.ranking import parse_ranking_request

CONFIG = MTGRConfig(
    architectures=["MTGRForRanking"],
    vocab_size=TINY_RANKING["num_items"] + 4,
    **TINY_RANKING,
)


def test_features_arrive_as_float32_rows_of_the_sent_values():
    rng = random.Random(21)
    request = random_request(rng, candidates=9)
    rows = request["candidates"]["features"]
    rows[3] = [rng.randint(-5, 5) for _ in rows[3]]  # integers are numbers too
    parsed = parse_ranking_request(request, CONFIG)
    assert parsed.features.dtype == np.float32
    assert parsed.features.shape == (9, TINY_RANKING["num_cross_features"])
    assert parsed.features.tolist() == np.float32(rows).tolist()


def test_numpy_numbers_are_accepted_too():
    request = random_request(random.Random(22))
    rows = request["candidates"]["features"]
    request["candidates"]["features"] = [[np.float64(v) for v in r] for r in rows]
    parsed = parse_ranking_request(request, CONFIG)
    assert np.array_equal(parsed.features, np.float32(rows))


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ([0.5, True, 0.1, 0.2, 0.3], "`candidates.features[4]` must be numbers"),
        ([0.5, "1", 0.1, 0.2, 0.3], "`candidates.features[4]` must be numbers"),
        ([0.5, None, 0.1, 0.2, 0.3], "`candidates.features[4]` must be numbers"),
        ([0.5, 0.1], "`candidates.features[4]` must be 5 numbers"),
        (0.5, "`candidates.features[4]` must be 5 numbers"),
    ],
)
def test_a_bad_feature_row_is_named(bad_row, message):
    request = random_request(random.Random(23), candidates=6)
    request["candidates"]["features"][4] = bad_row
    with pytest.raises(RequestError, match=message.replace("[", r"\[")) as raised:
        parse_ranking_request(request, CONFIG)
    assert raised.value.parameter == "candidates.features"


def test_candidate_limits_count_realtime_events_up_to_each_candidate():
    rng = random.Random(24)
    request = random_request(rng, realtime=12, candidates=10)
    times = request["realtime"]["timestamps"]
    # Candidates at, between, before and after the real-time events.
    request["candidates"]["timestamps"] = [
        rng.choice([times[0] - 1, times[-1] + 1, rng.choice(times)]) for _ in range(10)
    ]
    parsed = parse_ranking_request(request, CONFIG)
    context = 3 + len(request["history"]["items"])
    expected = [
        context + sum(t <= c for t in times)
        for c in request["candidates"]["timestamps"]
    ]
    assert parsed.candidate_limits().tolist() == expected


@pytest.mark.parametrize("field", ["history", "realtime"])
def test_timestamps_out_of_time_order_are_named(field):
    request = random_request(random.Random(25), history=12, realtime=6)
    times = request[field]["timestamps"]
    times[3], times[4] = times[4] + 1, times[3]  # one step back in time
    with pytest.raises(RequestError, match="in time order") as raised:
        parse_ranking_request(request, CONFIG)
    assert raised.value.parameter == f"{field}.timestamps"
    times[3] = times[4]  # equal times are in order
    parse_ranking_request(request, CONFIG)


@pytest.mark.parametrize("scores_format", ["csv", "LISTS", "", 0, ["binary"]])
def test_an_unknown_scores_format_is_named(scores_format):
    request = random_request(random.Random(26))
    request["scores_format"] = scores_format
    with pytest.raises(RequestError, match="`scores_format` is") as raised:
        parse_ranking_request(request, CONFIG)
    assert raised.value.parameter == "scores_format"


def test_scores_format_defaults_to_lists():
    request = random_request(random.Random(27))
    assert parse_ranking_request(request, CONFIG).scores_format == "lists"
    request["scores_format"] = None  # JSON null: the default, as elsewhere
    assert parse_ranking_request(request, CONFIG).scores_format == "lists"
    request["scores_format"] = "binary"
    assert parse_ranking_request(request, CONFIG).scores_format == "binary"


def test_each_pending_request_gets_its_own_scores_formats():
    from collections import OrderedDict

    from vllm_mtgr.serving.ranking import RankingIOProcessor

    processor = RankingIOProcessor.__new__(RankingIOProcessor)  # no engine
    processor.config, processor._formats = CONFIG, OrderedDict()
    rng = random.Random(28)

    def users(*formats):
        return [
            parse_ranking_request({**random_request(rng), "scores_format": f}, CONFIG)
            for f in formats
        ]

    # A client may send one id twice: each response takes its own formats.
    processor.pre_process(users("binary"), request_id="a")
    processor.pre_process(users("lists", "binary"), request_id="a")
    assert processor._take_formats("a", 2) == ["lists", "binary"]
    assert processor._take_formats("a", 1) == ["binary"]
    with pytest.raises(RuntimeError, match="were not kept"):
        processor._take_formats("a", 1)
    # Offline (no id): a call that failed after `pre_process` is replaced.
    processor.pre_process(users("binary"), request_id=None)
    processor.pre_process(users("lists"), request_id=None)
    assert processor._take_formats(None, 1) == ["lists"]
    assert not processor._formats


@pytest.mark.parametrize("history,realtime", [(45, 20), (30, 100), (0, 64), (5, 0)])
def test_realtime_chunks_end_on_block_multiples_and_cover_the_events(history, realtime):
    from vllm_mtgr.multimodal.ranking import REALTIME_CHUNK_TOKENS, ranking_items

    request = random_request(random.Random(29), history=history, realtime=realtime)
    parsed = parse_ranking_request(request, CONFIG)
    items = ranking_items(parsed)
    context = parsed.context_end
    chunks = items[1:] if context else items
    offsets = [offset for offset, _ in chunks]
    ends = [offset + len(fields["values"]) for offset, fields in chunks]
    # Consecutive, from the context's end to the prompt's, none empty.
    assert offsets == ([context, *ends[:-1]] if realtime else [])
    assert ends[-1:] == ([context + realtime] if realtime else [])
    assert all(end % REALTIME_CHUNK_TOKENS == 0 for end in ends[:-1])
    lengths = [end - lo for lo, end in zip(offsets, ends, strict=True)]
    assert all(0 < length <= REALTIME_CHUNK_TOKENS for length in lengths)
    values = [fields["values"] for _, fields in chunks]
    assert np.concatenate([[], *values]).tolist() == request["realtime"]["items"]
