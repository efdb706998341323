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
CPU_ARGS = [
    "--dtype", "float32", "--enforce-eager", "--block-size", "16",
    "--gpu-memory-utilization", "0.3", "--max-num-seqs", "8",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, name: str, log: Path) -> Iterator[str]:
    """Yield the base URL of a server for `model_dir`, served as `name`."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm_mtgr.cli", "serve", str(model_dir),
        "--served-model-name", name, "--port", str(port), *CPU_ARGS,
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("VLLM_PLUGINS", None)
    with open(log, "w") as output:
        # Started outside the checkout: `-m` puts the working directory first
        # on sys.path, where the source tree would shadow the installed
        # package (whose `kernels` sit elsewhere in the checkout).
        server = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env,
            cwd=log.parent,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + STARTUP_SECONDS
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"server exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
