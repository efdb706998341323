"""The ranking scoring head outside vLLM: PyTorch, ONNX Runtime and the
Triton Inference Server, same head, same inputs, one run.

    python benchmarks/scoring_head.py --out benchmarks/results/<device>-<date> \
        [--preset mtgr-rank-dlrmv3] [--triton-python .venv-triton/bin/python]

The head of `--preset` (random weights) scores 32 users x 2048 candidates:
PyTorch fp32 (and bf16 on a GPU), ONNX Runtime with each provider it has
(CUDA needs onnxruntime-gpu), and, with `--triton-python`, the exported
repository served by `vllm_mtgr.trt.triton_server` in that interpreter:
one request of all users over HTTP and gRPC, and 32 concurrent clients of
one user each (dynamic batching). Milliseconds are medians of `--repeats`.
Prints the table and writes markdown + JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from report import markdown_table

from vllm_mtgr.converters.presets import PRESETS
from vllm_mtgr.models.scoring_head import ScoringHead
from vllm_mtgr.trt import onnx_export, triton_repository
from vllm_mtgr.trt.names import INPUT, MODEL_NAME, OUTPUT

USERS, CANDIDATES = 32, 2048


def _median_ms(fn, repeats: int, sync=lambda: None) -> float:
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _row(engine: str, precision: str, device: str, ms: float, users: int) -> dict:
    return dict(engine=engine, precision=precision, device=device, users=users,
                candidates=CANDIDATES, ms=ms, users_per_s=1e3 * users / ms)  # fmt: skip


def torch_rows(head: ScoringHead, candidates: np.ndarray, repeats: int) -> list[dict]:
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in [torch.float32] + ([torch.bfloat16] if device == "cuda" else []):
            model = head.to(device=device, dtype=dtype)
            x = torch.from_numpy(candidates).to(device=device, dtype=dtype)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            with torch.inference_mode():
                ms = _median_ms(lambda: model(x), repeats, sync)  # noqa: B023
            rows.append(_row("pytorch", str(dtype)[6:], device, ms, USERS))
    head.to(device="cpu", dtype=torch.float32)
    return rows


def onnx_rows(path: Path, candidates: np.ndarray, repeats: int) -> list[dict]:
    rows = []
    for provider in onnxruntime.get_available_providers():
        if provider not in ("CPUExecutionProvider", "CUDAExecutionProvider"):
            continue
        session = onnxruntime.InferenceSession(str(path), providers=[provider])
        ms = _median_ms(lambda: session.run([OUTPUT], {INPUT: candidates}), repeats)  # noqa: B023
        device = "cuda" if provider.startswith("CUDA") else "cpu"
        rows.append(_row("onnxruntime", "float32", device, ms, USERS))
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def triton_rows(
    repository: Path, python: Path, candidates: np.ndarray, repeats: int
) -> list[dict]:
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    ports = [_free_port() for _ in range(3)]
    command = [str(python), "-m", "vllm_mtgr.trt.triton_server", str(repository),
               "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
               "--metrics-port", str(ports[2])]  # fmt: skip
    quiet = subprocess.DEVNULL
    server = subprocess.Popen(
        command, stdout=quiet, stderr=quiet, start_new_session=True
    )
    urls = {http: f"127.0.0.1:{ports[0]}", grpc: f"127.0.0.1:{ports[1]}"}
    try:
        client = http.InferenceServerClient(urls[http])
        deadline = time.time() + 120
        while not _ready(client):
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the Triton server did not start: {command}")
            time.sleep(1)
        rows = []
        for module, name in ((http, "HTTP"), (grpc, "gRPC")):
            client = module.InferenceServerClient(urls[module])
            request = module.InferInput(INPUT, list(candidates.shape), "FP32")
            request.set_data_from_numpy(candidates)
            ms = _median_ms(lambda: client.infer(MODEL_NAME, [request]), repeats)  # noqa: B023
            rows.append(
                _row(f"triton {name}, one request", "float32", "cpu", ms, USERS)
            )

        def one_user(user: np.ndarray) -> None:
            client = http.InferenceServerClient(urls[http])
            request = http.InferInput(INPUT, list(user.shape), "FP32")
            request.set_data_from_numpy(user)
            client.infer(MODEL_NAME, [request])

        users = [candidates[i : i + 1] for i in range(USERS)]
        with ThreadPoolExecutor(USERS) as pool:
            ms = _median_ms(lambda: list(pool.map(one_user, users)), repeats)
        rows.append(_row("triton HTTP, 32 clients x 1 user", "float32", "cpu", ms,
                         USERS))  # fmt: skip
        return rows
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _ready(client) -> bool:
    try:
        return client.is_model_ready(MODEL_NAME)
    except Exception:  # not listening yet
        return False


def header() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"device: {device} ({os.cpu_count()} CPU cores); torch {torch.__version__}; "
        f"onnxruntime {onnxruntime.__version__}; python "
        f"{platform.python_version()}; date {time.strftime('%Y-%m-%d')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="mtgr-rank-dlrmv3",
                        choices=[n for n, p in PRESETS.items() if p.tasks])  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--triton-python", type=Path)
    args = parser.parse_args()

    config = PRESETS[args.preset].config("float32")
    head = ScoringHead(config.hidden_size, config.head_hidden_size,
                       len(config.task_names), config.layer_norm_eps)  # fmt: skip
    with torch.no_grad():
        for param in head.parameters():
            param.normal_(0, 0.05)
    head.eval()
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(USERS, CANDIDATES, config.hidden_size))
    candidates = candidates.astype(np.float32)
    rows = torch_rows(head, candidates, args.repeats)
    with tempfile.TemporaryDirectory() as work:
        path = onnx_export.export_onnx(head, Path(work) / "head.onnx")
        rows += onnx_rows(path, candidates, args.repeats)
        if args.triton_python:
            repository = triton_repository.write_repository(
                Path(work) / "repository", path, config.hidden_size,
                len(config.task_names),
            ).parent  # fmt: skip
            rows += triton_rows(repository, args.triton_python, candidates,
                                args.repeats)  # fmt: skip
    title = (f"Scoring head of {args.preset} (hidden {config.hidden_size}, "
             f"{len(config.task_names)} tasks), {USERS} users x {CANDIDATES} "
             "candidates")  # fmt: skip
    text = f"# {title}\n\n{header()}\n\n{markdown_table(rows)}\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"scoring-head-{time.strftime('%Y%m%d')}"
    (args.out / f"{name}.md").write_text(text)
    (args.out / f"{name}.json").write_text(
        json.dumps(dict(header=header(), preset=args.preset, rows=rows), indent=1)
    )


if __name__ == "__main__":
    main()
