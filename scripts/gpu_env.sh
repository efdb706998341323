# Source on the lent GPU machine (no internet, torch 2.11 + triton 3.6, no vLLM)
# once the vLLM 0.26 bundle from ../shared/gpu-bundle is unpacked in /tmp/gpu-site:
#     source scripts/gpu_env.sh
# Installs this checkout of vllm-mtgr next to that vLLM and sets the environment.
# From the checkout's root, `python -m` finds the source tree first, which
# imports as the installed package does (`vllm_mtgr/__init__.py`).
export PYTHONPATH=/tmp/mtgr-site:/tmp/gpu-site
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade \
    --target /tmp/mtgr-site . 2>&1 | grep -v "already exists" || true
python3 -c "import vllm, vllm_mtgr; print('vllm', vllm.__version__, 'vllm_mtgr ok')"
