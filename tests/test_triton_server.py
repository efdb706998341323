"""The exported scoring head in a real Triton Inference Server (PyTriton's
bundled `tritonserver`), started by `vllm-mtgr export-head --serve` as a
subprocess and called with `tritonclient` over HTTP and gRPC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from server_process import free_port

from vllm_mtgr.trt.names import INPUT, MODEL_NAME, OUTPUT

http = pytest.importorskip(
    "tritonclient.http", reason="needs tritonclient (pip install 'tritonclient[all]')"
)
grpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
from tritonclient.utils import InferenceServerException  # noqa: E402

TRITON_PYTHON = Path(
    os.environ.get(
        "VLLM_MTGR_TRITON_PYTHON",
        Path(__file__).resolve().parents[1] / ".venv-triton" / "bin" / "python",
    )
)
STARTUP_SECONDS = 180


@pytest.fixture(scope="module")
def served_head(tmp_path_factory, tiny_ranking_model):
    if not TRITON_PYTHON.is_file():
        pytest.skip(f"needs PyTriton's environment at {TRITON_PYTHON} "
                    "(bash scripts/install.sh makes it)")  # fmt: skip
    out = tmp_path_factory.mktemp("head")
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    log = out / "server.log"
    command = [
        sys.executable, "-m", "vllm_mtgr.cli", "export-head",
        str(tiny_ranking_model.model_dir), "--out", str(out), "--serve",
        "--serve-python", str(TRITON_PYTHON),
        *(f"--{name}-port={port}" for name, port in ports.items()),
    ]  # fmt: skip
    with open(log, "w") as output:
        # Its own session: the server and the tritonserver it starts stop together.
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=out,
            start_new_session=True,
        )  # fmt: skip
    urls = {"http": f"127.0.0.1:{ports['http']}", "grpc": f"127.0.0.1:{ports['grpc']}"}
    client = http.InferenceServerClient(urls["http"])
    deadline = time.time() + STARTUP_SECONDS
    while True:
        if server.poll() is not None:
            pytest.fail(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if client.is_model_ready(MODEL_NAME):
                break
        except (InferenceServerException, ConnectionError, OSError):
            pass
        if time.time() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    yield urls, tiny_ranking_model.reference.scoring_head
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        pytest.fail("the Triton server did not stop on SIGTERM within 60 s")


def _request(module, candidates: np.ndarray, datatype: str = "FP32"):
    tensor = module.InferInput(INPUT, list(candidates.shape), datatype)
    tensor.set_data_from_numpy(candidates)
    return [tensor]


def _score(module, url: str, candidates: np.ndarray) -> np.ndarray:
    client = module.InferenceServerClient(url)
    return client.infer(MODEL_NAME, _request(module, candidates)).as_numpy(OUTPUT)


def _expected(head, candidates: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(candidates)).numpy()


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def _hidden(head) -> int:
    return head.w1.shape[1]


# Export traced (2, 3); these batch and candidate counts were never seen.
@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("shape", [(1, 7), (3, 130), (5, 1)])
def test_scores_equal_the_pytorch_head(served_head, protocol, shape):
    urls, head = served_head
    candidates = np.random.default_rng().normal(size=(*shape, _hidden(head)))
    candidates = candidates.astype(np.float32)
    got = _score(http if protocol == "http" else grpc, urls[protocol], candidates)
    assert got.shape == (*shape, head.w2.shape[0])
    assert _relative_error(got, _expected(head, candidates)) < 1e-5


def test_concurrent_clients_are_batched(served_head):
    urls, head = served_head
    client = http.InferenceServerClient(urls["http"])
    before = client.get_inference_statistics(MODEL_NAME)["model_stats"][0]
    rng = np.random.default_rng()
    requests = [
        rng.normal(size=(1, 33, _hidden(head))).astype(np.float32) for _ in range(128)
    ]
    with ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(lambda c: _score(http, urls["http"], c), requests))
    for candidates, got in zip(requests, scores, strict=True):
        assert _relative_error(got, _expected(head, candidates)) < 1e-5
    after = client.get_inference_statistics(MODEL_NAME)["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == 128
    # Triton's own record: fewer model executions than requests, and
    # executions of more than one request.
    assert executions < inferences
    assert max(int(b["batch_size"]) for b in after["batch_stats"]) > 1


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_input_is_refused_and_the_server_keeps_serving(served_head, protocol):
    urls, head = served_head
    module = http if protocol == "http" else grpc
    client = module.InferenceServerClient(urls[protocol])
    hidden = _hidden(head)
    good = np.ones((2, 4, hidden), np.float32)
    # (request, what its error must say)
    bad = [
        (np.ones((2, 4, hidden + 1), np.float32), "FP32", [INPUT, "shape"]),
        (good.astype(np.float64), "FP64", [INPUT, "FP64"]),
        (np.ones((4, hidden), np.float32), "FP32", [INPUT, "shape"]),
        (np.ones((65, 4, hidden), np.float32), "FP32", ["batch-size", "64"]),
    ]
    for candidates, datatype, words in bad:
        with pytest.raises(InferenceServerException) as error:
            client.infer(MODEL_NAME, _request(module, candidates, datatype))
        message = str(error.value)
        assert all(word in message for word in words), message
        assert error.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    got = client.infer(MODEL_NAME, _request(module, good)).as_numpy(OUTPUT)
    assert _relative_error(got, _expected(head, good)) < 1e-5


def test_a_non_finite_candidate_scores_nan_in_its_own_row_only(served_head):
    """Values are not Triton's to check (see `triton_server.scoring_function`):
    a NaN or infinite candidate gives NaN scores in its row; its request's
    other rows and the requests batched with it score as usual."""
    urls, head = served_head
    rng = np.random.default_rng()
    requests = [
        rng.normal(size=(1, 6, _hidden(head))).astype(np.float32) for _ in range(32)
    ]
    requests[3][0, 2, 5] = np.nan
    requests[7][0, 4, 0] = np.inf
    with ThreadPoolExecutor(16) as pool:
        scores = list(pool.map(lambda c: _score(http, urls["http"], c), requests))
    for i, (candidates, got) in enumerate(zip(requests, scores, strict=True)):
        bad_rows = ~np.isfinite(candidates).all(axis=-1)
        assert np.isnan(got[bad_rows]).all(), i
        expected = _expected(head, candidates)
        assert _relative_error(got[~bad_rows], expected[~bad_rows]) < 1e-5, i
