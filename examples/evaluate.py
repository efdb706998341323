"""Retrieval quality of a served HSTU, computed three ways that must agree.

    python examples/evaluate.py --model models/hstu-ml100k --dataset ml-100k

For every user's leave-one-out test query (history -> the next item, asked
at that item's timestamp), rank all items with seen items excluded and
report HR@10, NDCG@10, HR@50, NDCG@50 from:
  oracle   the plain PyTorch HSTU (`HSTUReference`) on the model's weights,
  offline  vLLM's `LLM.generate` (top-50 logprobs),
  server   `vllm-mtgr serve` called with the `openai` client.
It then checks that all three return the same top-10 list for every user.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from movielens import Query, load_sequences, metrics, queries
from tqdm import tqdm

from vllm_mtgr.kernels.reference import HSTUReference
from vllm_mtgr.prompts import history_prompt

TOP_K = 50
MAX_LEN = 200


def _ranks(lists: list[list[int]], test: list[Query]) -> list[int]:
    return [
        items.index(q.target) if q.target in items else TOP_K
        for items, q in zip(lists, test, strict=True)
    ]


@torch.no_grad()
def oracle_lists(model_dir: Path, test: list[Query]) -> list[list[int]]:
    reference = HSTUReference.from_pretrained(model_dir)
    lists = []
    for q in tqdm(test, desc="oracle"):
        logits = reference.sequence_logits(q.history, q.times, q.target_time)[-1]
        logits[q.history] = float("-inf")
        lists.append(logits.topk(TOP_K).indices.tolist())
    return lists


def offline_lists(model_dir: Path, test: list[Query]) -> list[list[int]]:
    from vllm import LLM, SamplingParams

    llm = LLM(
        str(model_dir),
        dtype="float32",
        enforce_eager=True,
        gpu_memory_utilization=0.3,
    )
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOP_K)
    prompts = [
        history_prompt(q.history, q.times, request_timestamp=q.target_time)
        for q in test
    ]
    outputs = llm.generate(prompts, params)
    lists = []
    for output in outputs:
        ranked = sorted(
            output.outputs[0].logprobs[0].items(), key=lambda kv: -kv[1].logprob
        )
        lists.append([token for token, _ in ranked][:TOP_K])
    llm.llm_engine.engine_core.shutdown()
    return lists


def _start_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "vllm_mtgr.cli",
        "serve",
        str(model_dir),
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.3",
    ]
    with open(log, "w") as out:
        server = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
        )
    return server, port


def server_lists(
    model_dir: Path, test: list[Query], base_url: str | None
) -> list[list[int]]:
    from openai import APIConnectionError, OpenAI

    server = None
    if base_url is None:
        log = Path(tempfile.gettempdir()) / "vllm-mtgr-evaluate-server.log"
        server, port = _start_server(model_dir, log)
        base_url = f"http://127.0.0.1:{port}/v1"
    client = OpenAI(base_url=base_url, api_key="unused")
    deadline = time.time() + 600
    while True:
        try:
            model = client.models.list().data[0].id
            break
        except APIConnectionError:
            if server is not None and server.poll() is not None:
                raise SystemExit(f"server exited; see {log}") from None
            if time.time() > deadline:
                raise
            time.sleep(2)

    def ask(q: Query) -> list[int]:
        response = client.completions.create(
            model=model,
            prompt=" ".join(f"item_{i}" for i in q.history),
            max_tokens=1,
            logprobs=TOP_K,
            extra_body={"timestamps": q.times, "request_timestamp": q.target_time},
        )
        top = response.choices[0].logprobs.top_logprobs[0]
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        return [int(token.removeprefix("item_")) for token, _ in ranked][:TOP_K]

    try:
        with ThreadPoolExecutor(8) as pool:
            return list(tqdm(pool.map(ask, test), total=len(test), desc="server"))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dataset", choices=["ml-100k", "ml-1m"], default="ml-100k")
    parser.add_argument(
        "--base-url", help="use a running server instead of starting one"
    )
    parser.add_argument("--users", type=int, help="evaluate the first N users only")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()

    test = queries(load_sequences(args.dataset), "test", MAX_LEN)[: args.users]
    # vLLM forks its engine: build it before this process starts any thread
    # pool (the oracle's OpenMP threads), so it runs first.
    offline = offline_lists(args.model, test)
    results = {
        "oracle": oracle_lists(args.model, test),
        "offline": offline,
        "server": server_lists(args.model, test, args.base_url),
    }
    table = {name: metrics(_ranks(lists, test)) for name, lists in results.items()}
    same_top10 = {
        name: sum(
            a[:10] == b[:10] for a, b in zip(results["oracle"], lists, strict=True)
        )
        for name, lists in results.items()
    }
    print(f"\n{args.dataset} test, {len(test)} users, all items, seen excluded")
    print(f"{'':8s}" + "".join(f"{m:>10s}" for m in table["oracle"]) + "  same top-10")
    for name, row in table.items():
        cells = "".join(f"{v:10.4f}" for v in row.values())
        print(f"{name:8s}{cells}  {same_top10[name]}/{len(test)}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "dataset": args.dataset,
                    "users": len(test),
                    "metrics": table,
                    "same_top10_as_oracle": same_top10,
                },
                indent=2,
            )
        )
    if any(count != len(test) for count in same_top10.values()):
        raise SystemExit("the three evaluations disagree on some top-10 lists")


if __name__ == "__main__":
    main()
