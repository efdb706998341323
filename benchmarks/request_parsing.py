"""What parsing one DLRMv3-shaped ranking user costs, JSON lists against typed
binary arrays (no engine: the server's JSON decode plus `parse_ranking_request`).

    python benchmarks/request_parsing.py --out benchmarks/results/cpu-20261201

A user: 8 profile features, 1024 history events, 2048 candidates with 16 cross
features each (the `mtgr-rank-dlrmv3` preset). Prints a table and writes it
as markdown and JSON, with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from vllm_mtgr.arrays import encode_array
from vllm_mtgr.converters.presets import PRESETS
from vllm_mtgr.requests.ranking import parse_ranking_request

HISTORY, CANDIDATES = 1024, 2048


def user(rng: np.random.Generator, config) -> dict:
    times = np.sort(rng.integers(1_600_000_000, 1_700_000_000, HISTORY))
    return {
        "profile": rng.integers(0, config.profile_vocab_size, 8).tolist(),
        "history": {
            "items": rng.integers(1, config.num_items, HISTORY).tolist(),
            "timestamps": times.tolist(),
        },
        "candidates": {
            "items": rng.integers(1, config.num_items, CANDIDATES).tolist(),
            "features": rng.random((CANDIDATES, 16), np.float32).tolist(),
        },
        "request_timestamp": int(times[-1]) + 60,
    }


def binary(request: dict, feature_dtype: str) -> dict:
    history = request["history"]
    candidates = request["candidates"]
    return {
        **request,
        "history": {k: encode_array(np.array(v, np.int64)) for k, v in history.items()},
        "candidates": {
            "items": encode_array(np.array(candidates["items"], np.int32)),
            "features": encode_array(
                np.array(candidates["features"], np.dtype(feature_dtype))
            ),
        },
    }


def median_us(body: bytes, config, repeats: int) -> tuple[float, float]:
    """(median µs of json.loads + parse, median µs of the parse alone)."""
    total, parse = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        data = json.loads(body)
        middle = time.perf_counter()
        parse_ranking_request(data, config)
        end = time.perf_counter()
        total.append(end - start)
        parse.append(end - middle)
    return 1e6 * statistics.median(total), 1e6 * statistics.median(parse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    config = PRESETS["mtgr-rank-dlrmv3"].config("bfloat16")
    request = user(np.random.default_rng(0), config)
    forms = {
        "JSON lists": request,
        "binary, float32 features": binary(request, "float32"),
        "binary, float16 features": binary(request, "float16"),
    }
    rows = []
    for name, form in forms.items():
        body = json.dumps(form).encode()
        total, parse = median_us(body, config, args.repeats)
        rows.append(
            {
                "form": name,
                "body_bytes": len(body),
                "json_and_parse_us": total,
                "parse_us": parse,
            }
        )
    header = (
        f"device: CPU ({platform.processor() or platform.machine()}); "
        f"python {platform.python_version()}; numpy {np.__version__}; "
        f"date {time.strftime('%Y-%m-%d')}"
    )
    lines = [
        "# Ranking request parsing: one DLRMv3-shaped user",
        "",
        header,
        "",
        f"{HISTORY} history events, {CANDIDATES} candidates x 16 cross features; "
        f"median of {args.repeats}.",
        "",
        "| form | body bytes | json.loads + parse (µs) | parse (µs) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['form']} | {row['body_bytes']:,} | "
            f"{row['json_and_parse_us']:,.0f} | {row['parse_us']:,.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"request-parsing-{time.strftime('%Y%m%d')}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps({"header": header, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
