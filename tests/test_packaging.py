"""`pip install .` ships the layout of docs/DESIGN.md section 2 and the entry points."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_everything_under_vllm_mtgr(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("vllm_mtgr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in [
        "vllm_mtgr/models/retrieval.py",
        "vllm_mtgr/layout/positions.py",
        "vllm_mtgr/requests/events.py",
        "vllm_mtgr/multimodal/events.py",
        "vllm_mtgr/decoding/seen_items.py",
        "vllm_mtgr/serving/endpoint.py",
        "vllm_mtgr/kernels/reference.py",
        "vllm_mtgr/kernels/paged_torch.py",
        "vllm_mtgr/converters/meta_hstu.py",
        "vllm_mtgr/trt/onnx_export.py",
        "vllm_mtgr/trt/tensorrt_engine.py",
        "vllm_mtgr/trt/triton_server.py",
        "vllm_mtgr/trt/names.py",
    ]:
        assert module in names, module
    assert not any(n.split("/")[0] in {"kernels", "converters", "trt"} for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[vllm.general_plugins]\nmtgr = vllm_mtgr:register" in text
    assert "[vllm.endpoint_plugins]" in text
    assert "[vllm.io_processor_plugins]" in text
    assert "vllm-mtgr = vllm_mtgr.cli:main" in text


def test_the_checkout_imports_as_itself_from_its_root():
    """From the root, Python finds `vllm_mtgr/` itself, not the install; its
    installed subpackages (here trt/, with no imports) must still resolve.
    -S: no site-packages, so no installed or editable copy can answer."""
    subprocess.run(
        [sys.executable, "-S", "-c", "import vllm_mtgr.trt.names"],
        cwd=ROOT,
        check=True,
    )
