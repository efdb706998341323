#!/usr/bin/env bash
# The README's first command: set up, serve the embedded MovieLens-100K HSTU
# with `vllm-mtgr serve`, ask it for one real user's next movies, stop it.
#   MODEL=<dir>  serve another model;  USER_ID=<n>  another MovieLens-100K user
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
MODEL=${MODEL:-models/hstu-ml100k}
PORT=${PORT:-8000}
LOG=$(mktemp -t vllm-mtgr-server.XXXX.log)
echo "starting vllm-mtgr serve $MODEL on port $PORT (log: $LOG)"
.venv/bin/vllm-mtgr serve "$MODEL" --port "$PORT" --dtype float32 \
    --gpu-memory-utilization 0.3 >"$LOG" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
until .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1])" \
        "http://127.0.0.1:$PORT/health" 2>/dev/null; do
    if ! kill -0 "$server" 2>/dev/null; then
        tail -n 40 "$LOG"
        echo "the server exited; its log is $LOG" >&2
        exit 1
    fi
    sleep 2
done
cd examples
../.venv/bin/python recommend.py --base-url "http://127.0.0.1:$PORT/v1" \
    --movielens-user "${USER_ID:-42}"
