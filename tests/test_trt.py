"""The scoring head outside vLLM: ONNX (checked with ONNX Runtime), TensorRT
(skipped: not installable here), Triton Inference Server repository."""

from __future__ import annotations

import pytest
import torch

from vllm_mtgr.models.scoring_head import ScoringHead
from vllm_mtgr.trt import onnx_export
from vllm_mtgr.trt.triton_repository import MODEL_NAME, write_repository

onnxruntime = pytest.importorskip(
    "onnxruntime", reason="needs onnx and onnxruntime (pip install onnx onnxruntime)"
)
pytest.importorskip("onnx", reason="needs onnx (pip install onnx)")


def random_head(hidden=32, head=16, tasks=3) -> ScoringHead:
    model = ScoringHead(hidden, head, tasks, eps=1e-6)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model.eval()


def test_served_model_head_loads(tiny_ranking_model):
    head = onnx_export.load_scoring_head(tiny_ranking_model.model_dir)
    reference = tiny_ranking_model.reference.scoring_head
    x = torch.randn(4, 7, head.w1.shape[1])
    assert torch.allclose(head(x), reference(x))


@pytest.mark.parametrize("shape", [(1, 7), (5, 64), (3, 1), (9, 130)])
def test_onnx_equals_pytorch_for_unseen_batch_and_candidate_counts(tmp_path, shape):
    head = random_head()
    path = onnx_export.export_onnx(head, tmp_path / "head.onnx")
    candidates = torch.randn(*shape, 32)
    with torch.no_grad():
        expected = head(candidates)
    got = onnx_export.onnx_scores(path, candidates)
    assert got.shape == (*shape, 3)
    error = float((got - expected).norm() / expected.norm())
    assert error < 1e-5


def test_triton_repository(tmp_path):
    path = onnx_export.export_onnx(random_head(), tmp_path / "head.onnx")
    model_dir = write_repository(tmp_path / "repo", path, hidden_size=32, num_tasks=3)
    assert model_dir.name == MODEL_NAME
    assert (model_dir / "1" / "model.onnx").read_bytes() == path.read_bytes()
    config = (model_dir / "config.pbtxt").read_text()
    for line in [
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 64",
        "dims: [ -1, 32 ]",
        "dims: [ -1, 3 ]",
        "dynamic_batching {",
        "preferred_batch_size: [ 4, 8, 16, 32 ]",
    ]:
        assert line in config
    with pytest.raises(ValueError, match="neither a .plan nor a .onnx"):
        write_repository(tmp_path / "repo", tmp_path / "head.pt", 32, 3)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engine_matches_pytorch(tmp_path, precision):
    pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installable on this project's machines (PyPI has "
        "placeholders only); run on a host with TensorRT 10 and a GPU",
    )
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU")
    from vllm_mtgr.trt.tensorrt_engine import EngineShapes, ScoringEngine, build_engine

    head = random_head()
    onnx_path = onnx_export.export_onnx(head, tmp_path / "head.onnx")
    batches = iter([torch.randn(4, 64, 32, device="cuda") for _ in range(8)])
    engine_path = build_engine(
        onnx_path,
        tmp_path / f"head-{precision}.plan",
        EngineShapes(
            32, max_batch=8, max_candidates=256, opt_batch=4, opt_candidates=64
        ),
        precision=precision,
        calibration_batches=batches if precision == "int8" else None,
        calibration_cache=tmp_path / "calibration.cache",
    )
    candidates = torch.randn(3, 100, 32, device="cuda")
    with torch.no_grad():
        expected = head.cuda()(candidates)
    got = ScoringEngine(engine_path)(candidates)
    error = float((got - expected).norm() / expected.norm())
    assert error < (2e-2 if precision == "fp16" else 1e-1)


def test_cli_export_head(tmp_path, tiny_ranking_model):
    from vllm_mtgr.cli import main

    main(["export-head", str(tiny_ranking_model.model_dir), "--out", str(tmp_path)])
    head = tiny_ranking_model.reference.scoring_head
    candidates = torch.randn(2, 5, head.w1.shape[1])
    with torch.no_grad():
        expected = head(candidates)
    got = onnx_export.onnx_scores(tmp_path / "scoring_head.onnx", candidates)
    assert float((got - expected).norm() / expected.norm()) < 1e-5
    assert (tmp_path / "model_repository" / MODEL_NAME / "config.pbtxt").exists()
