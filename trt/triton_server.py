"""Serve an exported scoring head in a real Triton Inference Server.

    python -m vllm_mtgr.trt.triton_server HEAD_DIR/model_repository \
        [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002] [--device cpu]

PyTriton (`nvidia-pytriton`) starts the `tritonserver` binary it bundles and
binds the head to it through Triton's Python backend; the head itself runs
in ONNX Runtime (CPU, or the CUDA provider with `--device cuda`). The
tensor names, shapes, batch limit and dynamic batcher are read from the
repository's `config.pbtxt` (`triton_repository`), so clients see the same
model whether this server or a TensorRT-backed `tritonserver` serves it.

This module needs only numpy, onnxruntime and PyTriton (no torch, no vLLM):
PyTriton pins numpy < 2, so it usually lives in an environment of its own
(`scripts/install.sh` makes `.venv-triton`).
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

from .names import MODEL_NAME

_DTYPES = {"TYPE_FP32": np.float32}


class RepositoryError(ValueError):
    """The repository cannot be served here; the message names the file."""


def read_model_config(path: Path):
    """A `config.pbtxt`, parsed by Triton's own message type."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    if not path.is_file():
        raise RepositoryError(f"{path}: missing (write it with vllm-mtgr export-head)")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise RepositoryError(f"{path}: {error}") from None


def _tensor(spec, field: str, path: Path):
    from pytriton.model_config import Tensor
    from tritonclient.grpc import model_config_pb2

    dtype = _DTYPES.get(model_config_pb2.DataType.Name(spec.data_type))
    if dtype is None:
        raise RepositoryError(f"{path}: {field} {spec.name!r} is not TYPE_FP32")
    return Tensor(name=spec.name, dtype=dtype, shape=tuple(spec.dims))


def scoring_function(session, input_name: str, output_name: str):
    """Triton's batched infer callable over an ONNX Runtime session.

    Triton checks names, dtypes, shapes and the batch limit against the
    config, per request, before batching (HTTP 400 / INVALID_ARGUMENT). It
    cannot check values, and neither can this function usefully: PyTriton
    turns an exception into an error for every request of the dynamic
    batch, so one client's NaN would fail its neighbours. A non-finite
    candidate instead scores NaN in its own row (the head normalises and
    projects row by row); other candidates and requests are unaffected.
    """
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        (scores,) = session.run([output_name], {input_name: inputs[input_name]})
        return {output_name: scores}

    return infer


def _onnx_session(model_file: Path, device: str):
    import onnxruntime

    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RepositoryError(
                "--device cuda: this onnxruntime has no CUDA provider "
                "(pip install onnxruntime-gpu)"
            )
        providers.insert(0, "CUDAExecutionProvider")
    return onnxruntime.InferenceSession(str(model_file), providers=providers)


def _use_this_libpython() -> None:
    """Triton's Python-backend stub links `libpython3.X.so` by name; where
    the system has another build of the same version (pyenv beside Debian's
    python3), the stub would run one build's library with the other's
    standard library and fail to start. Put this interpreter's first."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        current = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def serve(
    repository: Path,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    device: str = "cpu",
) -> None:
    """Serve `repository`'s scoring head until interrupted (SIGINT/SIGTERM)."""
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import (
        DEFAULT_PROTECTED_ENDPOINTS,
        Triton,
        TritonConfig,
        TritonSecurityConfig,
    )

    model_dir = Path(repository) / MODEL_NAME
    path = model_dir / "config.pbtxt"
    config = read_model_config(path)
    model_file = model_dir / "1" / "model.onnx"
    if not model_file.is_file():
        raise RepositoryError(
            f"{model_dir / '1'}: no model.onnx (a model.plan needs a tritonserver "
            "with the TensorRT backend: tritonserver --model-repository "
            f"{repository})"
        )
    if len(config.input) != 1 or len(config.output) != 1:
        raise RepositoryError(f"{path}: the head has one input and one output")
    inputs = [_tensor(config.input[0], "input", path)]
    outputs = [_tensor(config.output[0], "output", path)]
    batching = config.dynamic_batching
    session = _onnx_session(model_file, device)
    _use_this_libpython()
    settings = TritonConfig(
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        exit_timeout_secs=5,
    )
    # Statistics (read-only: executions, batch sizes, queue times) stay open,
    # as a dynamically batched model is tuned by them; model loading, shared
    # memory, tracing and logging stay behind PyTriton's generated token.
    security = TritonSecurityConfig(
        restricted_endpoints=[
            e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"
        ]
    )
    with Triton(config=settings, security_config=security) as triton:
        triton.bind(
            model_name=config.name,
            infer_func=scoring_function(session, inputs[0].name, outputs[0].name),
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(
                max_batch_size=config.max_batch_size,
                batcher=DynamicBatcher(
                    max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
                    preferred_batch_size=list(batching.preferred_batch_size) or None,
                ),
            ),
            strict=True,
        )
        print(
            f"serving {config.name} from {model_file}: HTTP :{http_port}, "
            f"gRPC :{grpc_port}, metrics :{metrics_port}",
            flush=True,
        )
        triton.serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_mtgr.trt.triton_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("repository", type=Path, help="HEAD_DIR/model_repository")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    try:
        serve(args.repository, args.http_port, args.grpc_port, args.metrics_port,
              args.device)  # fmt: skip
    except RepositoryError as error:
        sys.exit(f"vllm-mtgr triton server: {error}")
    except ImportError as error:
        sys.exit(
            f"vllm-mtgr triton server: {error}: needs nvidia-pytriton and "
            "onnxruntime (pip install 'vllm-mtgr[triton]', in an environment "
            "without vLLM: PyTriton pins numpy < 2; scripts/install.sh makes "
            ".venv-triton)"
        )


if __name__ == "__main__":
    main()
