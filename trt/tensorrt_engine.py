"""Build and run a TensorRT engine for the exported scoring head.

Written against the TensorRT 10 Python API (`tensorrt`): ONNX parser,
explicit-batch network, one optimisation profile over batch and candidate
counts, fp16, and int8 with an entropy calibrator whose cache is written and
reused. Running uses `execute_async_v3` on PyTorch CUDA tensors. TensorRT is
not installable on this project's machines (PyPI has placeholders only), so
nothing here has run; see the README.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .onnx_export import INPUT, OUTPUT


@dataclass(frozen=True)
class EngineShapes:
    """The optimisation profile: (batch, candidates) at min / opt / max."""

    hidden_size: int
    max_batch: int = 64
    max_candidates: int = 2048
    opt_batch: int = 8
    opt_candidates: int = 512

    def profile(self) -> tuple[tuple[int, ...], ...]:
        d = self.hidden_size
        return (
            (1, 1, d),
            (self.opt_batch, self.opt_candidates, d),
            (self.max_batch, self.max_candidates, d),
        )


def _entropy_calibrator(batches: Iterator[torch.Tensor], cache: Path):
    """An `IInt8EntropyCalibrator2` over CUDA batches, caching its table."""
    import tensorrt as trt

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batches = batches
            self.current: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return 1  # batches carry their own leading axis (explicit batch)

        def get_batch(self, names: list[str]) -> list[int] | None:
            self.current = next(self.batches, None)
            if self.current is None:
                return None
            return [int(self.current.contiguous().data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, data: bytes) -> None:
            cache.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    shapes: EngineShapes,
    precision: str = "fp16",
    calibration_batches: Iterator[torch.Tensor] | None = None,
    calibration_cache: str | Path | None = None,
) -> Path:
    """Serialize an engine; `precision` is "fp16" or "int8" (int8 needs a
    calibration cache file, and batches to fill it if it is absent)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: TensorRT 10's only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT, *shapes.profile())
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)  # int8 layers fall back to fp16
    if precision == "int8":
        if calibration_cache is None:
            raise ValueError("int8 needs a calibration cache path")
        cache = Path(calibration_cache)
        if calibration_batches is None and not cache.exists():
            raise ValueError(f"no calibration batches and no cache at {cache}")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _entropy_calibrator(
            calibration_batches or iter(()), cache
        )
        config.set_calibration_profile(profile)
    elif precision != "fp16":
        raise ValueError(f"precision must be fp16 or int8, not {precision!r}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


class ScoringEngine:
    """A deserialized engine: `scores = engine(candidates)` on CUDA tensors."""

    def __init__(self, engine_path: str | Path) -> None:
        import tensorrt as trt

        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(
            Path(engine_path).read_bytes()
        )
        self.context = self.engine.create_execution_context()
        self.num_tasks = self.engine.get_tensor_shape(OUTPUT)[-1]

    def __call__(self, candidates: torch.Tensor) -> torch.Tensor:
        candidates = candidates.float().contiguous()
        batch, count, _ = candidates.shape
        scores = torch.empty(batch, count, self.num_tasks, device=candidates.device)
        self.context.set_input_shape(INPUT, tuple(candidates.shape))
        self.context.set_tensor_address(INPUT, candidates.data_ptr())
        self.context.set_tensor_address(OUTPUT, scores.data_ptr())
        stream = torch.cuda.current_stream(candidates.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return scores
