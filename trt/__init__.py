"""The MTGR scoring head outside vLLM: ONNX, TensorRT, Triton Inference Server.

`onnx_export` (verified with ONNX Runtime), `tensorrt_engine` (TensorRT 10
Python API: fp16 and int8 with a calibration cache), `triton_repository`
(a model repository with dynamic batching), `triton_server` (that
repository's ONNX head served by a real Triton Inference Server, PyTriton's).
TensorRT itself cannot be installed on this project's machines; see the
README for what ran where.
"""
