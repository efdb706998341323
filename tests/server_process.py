"""Start `vllm-mtgr serve` as a subprocess for a test module, and stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

STARTUP_SECONDS = 300
# Each test engine's share of the device. Lower it to run test modules side
# by side on one GPU (pytest-xdist): the tiny models need little KV cache.
GPU_MEMORY_UTILIZATION = float(
    os.environ.get("MTGR_TEST_GPU_MEMORY_UTILIZATION", "0.3")
)
CPU_ARGS = [
    "--dtype", "float32", "--enforce-eager", "--block-size", "16",
    "--gpu-memory-utilization", str(GPU_MEMORY_UTILIZATION), "--max-num-seqs", "8",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model_dir: Path,
    name: str,
    log: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start a server for `model_dir`, served as `name`; wait until healthy.

    Returns the process and its base URL. `env` adds environment variables.
    """
    port = port or free_port()
    command = [
        sys.executable, "-m", "vllm_mtgr.cli", "serve", str(model_dir),
        "--served-model-name", name, "--port", str(port), *CPU_ARGS,
    ]  # fmt: skip
    environment = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    environment.pop("VLLM_PLUGINS", None)
    with open(log, "w") as output:
        # Started outside the checkout: `-m` puts the working directory first
        # on sys.path, where the source tree would shadow the installed
        # package (whose `kernels` sit elsewhere in the checkout).
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment,
            cwd=log.parent,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + STARTUP_SECONDS
    while True:
        if server.poll() is not None:
            pytest.fail(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return server, base
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            server.kill()
            pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(2)


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


@contextmanager
def running_server(
    model_dir: Path, name: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Yield the base URL of a server for `model_dir`, served as `name`."""
    server, base = start_server(model_dir, name, log, env)
    try:
        yield base
    finally:
        stop_server(server)


@contextmanager
def pooling_server(model_dir: Path, name: str, log: Path) -> Iterator:
    """Yield `post(data)`: a `/pooling` request of `data` to a server for
    `model_dir`, served as `name`, and its response."""
    with running_server(model_dir, name, log) as base:

        def post(data: object) -> httpx.Response:
            body = {"model": name, "data": data}
            return httpx.post(f"{base}/pooling", json=body, timeout=60)

        yield post
