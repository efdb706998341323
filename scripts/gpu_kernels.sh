#!/usr/bin/env bash
# On the lent GPU machine (torch + triton, no vLLM needed): install this
# checkout's plugin beside the machine's packages and run the kernel
# benchmark from outside the checkout. Usage: bash scripts/gpu_kernels.sh OUT [SECTIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$1
sections=${2:-correctness,prefill,decode,splits,returning,head_sizes}
python3 -m pip install -q --no-deps --no-build-isolation --no-index --upgrade \
    --target /tmp/mtgr-site "$root" 2>&1 | grep -v "already exists" || true
export PYTHONPATH=/tmp/mtgr-site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
cd /tmp && python3 "$root/benchmarks/kernels.py" --sections "$sections" --out "$out"
