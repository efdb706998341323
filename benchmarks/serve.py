"""End-to-end serving through vLLM: vllm-mtgr against a Llama, and the peers.

    python benchmarks/serve.py --out benchmarks/results          # a GPU, one call
    python benchmarks/serve.py --smoke --out /tmp/serve-smoke    # CPU, tiny shapes

1. Retrieval, `mtgr-8b` (dummy weights) against a Llama of the same width and
   depth (dummy weights, vLLM's default attention: FlashAttention 3 on
   Hopper), each in its own engine:
   - prefill tokens/s: many long prompts at once, one output token each;
   - ranking-style requests (a 1024-event history in, one step with the top
     100 items out): requests/s with all sent at once, then p50/p99 latency
     under Poisson arrivals at three rates;
   - decode: 64 users x 16 next items each (full CUDA graphs on a GPU);
   - a returning user: 1024 cached events plus 16 new ones, against the same
     1040-event request cold: the latency of one request alone, and the cost
     per request at load (32 users at once: wall time / requests).
2. The DLRMv3 peer workload on `mtgr-rank-dlrmv3`: 32 users x (1024 history +
   2048 candidates) scored in one engine step through the offline API with
   NumPy inputs, against Meta's published 9.30 ms per forward (10.6 M
   tokens/s); then the same users again with their histories cached.
3. The same users through `vllm-mtgr serve`'s `/pooling`, one user per
   request in typed binary fields, from 32 concurrent clients.
4. NVIDIA recsys-examples' returning user (`mtgr-rank-recsys`: 8 layers,
   D=1024, 4 heads x 256): 8 users with 3968 cached tokens, 128 new events
   and 256 candidates each, against the same requests cold.
Each section runs in a fresh process (vLLM forks its engine; GPU memory is
returned between engines). Prints tables and writes them (markdown + JSON)
with device, versions and date.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

# This folder holds kernels.py, which would shadow the `kernels` package that
# vLLM tries to import for some models (the Llama): keep it off the path, and
# load report.py beside this file by its path. (An engine core that vLLM
# starts by spawning, as on CPU, re-runs this module with this path.)
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_report = importlib.util.spec_from_file_location("report", HERE / "report.py")
report = importlib.util.module_from_spec(_report)
_report.loader.exec_module(report)
markdown_table = report.markdown_table

CAPTURE_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SECTIONS = ("retrieval", "peer", "peer-server", "recsys")
PEER_MS = 9.30  # Meta DLRMv3, per forward of 32 x (1024 + 2048) tokens
PEER_TOKENS_PER_S = 10.6e6


@dataclass(frozen=True)
class Workload:
    """Shapes of every measurement (the defaults are the issue's)."""

    retrieval_preset: str = "mtgr-8b"
    ranking_preset: str = "mtgr-rank-dlrmv3"
    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.85
    max_num_batched_tokens: int = 16384
    prefill_prompts: int = 64
    prefill_length: int = 2048
    history: int = 1024
    top_k: int = 100
    saturation_requests: int = 256
    rate_fractions: tuple[float, ...] = (0.25, 0.5, 0.8)
    rate_requests: int = 200
    decode_users: int = 64
    decode_steps: int = 16
    new_events: int = 16
    returning_users: int = 8
    load_users: int = 32
    peer_users: int = 32
    peer_history: int = 1024
    peer_candidates: int = 2048
    peer_repeats: int = 5
    # Batches of peer users sent in one call for the sustained rate.
    peer_sustained: int = 8
    # KV block sizes of the offline peer runs (16 and 64 until 2026-12, when
    # candidates were tokens and 16-token blocks cost 4x the block hashes;
    # 256 since 2026-12-03: the host's block bookkeeping, hashes to frees, is
    # per block).
    peer_block_sizes: tuple[int, ...] = (64, 256)
    # NVIDIA recsys-examples' returning user (8 layers, D=1024, 4 x 256).
    recsys_preset: str = "mtgr-rank-recsys"
    recsys_users: int = 8
    recsys_cached: int = 3968
    recsys_new: int = 128
    recsys_candidates: int = 256
    # vLLM's --quantization for every engine (None: the dtype's weights).
    quantization: str | None = None


SMOKE = Workload(
    retrieval_preset="mtgr-small",
    ranking_preset="mtgr-rank-small",
    dtype="float32",
    gpu_memory_utilization=0.3,
    max_num_batched_tokens=2048,
    prefill_prompts=4,
    prefill_length=128,
    # Longer than one CPU KV block (128 tokens), so that caching shows.
    history=200,
    top_k=10,
    saturation_requests=8,
    rate_requests=6,
    decode_users=2,
    decode_steps=3,
    returning_users=2,
    load_users=2,
    peer_users=2,
    peer_history=200,
    peer_candidates=32,
    peer_repeats=2,
    peer_sustained=2,
    recsys_preset="mtgr-rank-small",
    recsys_users=2,
    recsys_cached=100,
    recsys_new=20,
    recsys_candidates=8,
)


# --- models -----------------------------------------------------------------


def write_mtgr(preset: str, out: Path, dtype: str) -> Path:
    from vllm_mtgr.converters.presets import create

    return create(preset, out, config_only=True, dtype=dtype)


def write_llama(mtgr_dir: Path, out: Path, dtype: str) -> Path:
    """A Llama with the HSTU model's width, depth, heads and head size."""
    mtgr = json.loads((mtgr_dir / "config.json").read_text())
    hidden = mtgr["hidden_size"]
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": mtgr["num_hidden_layers"],
        "num_attention_heads": mtgr["num_attention_heads"],
        "num_key_value_heads": mtgr["num_attention_heads"],
        "head_dim": mtgr["attention_dim"],
        # Llama's MLP width (8/3 of the hidden size, rounded to 256).
        "intermediate_size": round(8 * hidden / 3 / 256) * 256,
        "vocab_size": 32000,
        "max_position_embeddings": mtgr["max_position_embeddings"],
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": dtype,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def engine_kwargs(
    model: Path, work: Workload, max_model_len: int, tokenizer: bool = True
) -> dict:
    return dict(
        model=str(model),
        load_format="dummy",
        dtype=work.dtype,
        quantization=work.quantization,
        max_model_len=max_model_len,
        max_num_batched_tokens=max(work.max_num_batched_tokens, max_model_len),
        gpu_memory_utilization=work.gpu_memory_utilization,
        max_logprobs=work.top_k,
        enable_prefix_caching=True,
        skip_tokenizer_init=not tokenizer,  # the Llama has none
        # Fewer CUDA graph sizes than vLLM's default (~70): a start in seconds,
        # not minutes; the same sizes for every model.
        **(
            {"compilation_config": {"cudagraph_capture_sizes": CAPTURE_SIZES}}
            if torch.cuda.is_available()
            else {}
        ),
    )


# --- requests ---------------------------------------------------------------


@dataclass(frozen=True)
class Histories:
    """Random user histories for one model (items, timestamps)."""

    is_mtgr: bool
    vocab: int
    rng: random.Random

    def user(self, length: int) -> tuple[list[int], list[int]]:
        items = [self.rng.randint(1, self.vocab) for _ in range(length)]
        start = self.rng.randint(1_000_000_000, 1_700_000_000)
        times = sorted(start + self.rng.randint(0, 90 * 86400) for _ in range(length))
        return items, times

    def prompt(self, items: list[int], times: list[int]) -> dict:
        if not self.is_mtgr:
            return {"prompt_token_ids": items}
        from vllm_mtgr.prompts import history_prompt

        return history_prompt(items, times, request_timestamp=times[-1] + 60)


def scoring_step(work: Workload):
    """One generation step returning the top-k items, ids only."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=1, temperature=0.0, logprobs=work.top_k, detokenize=False
    )


async def _request(engine, prompt: dict, params, request_id: str):
    final = None
    async for output in engine.generate(prompt, params, request_id):
        final = output
    return final


async def timed(engine, prompt: dict, params, request_id: str):
    start = time.perf_counter()
    output = await _request(engine, prompt, params, request_id)
    return time.perf_counter() - start, output


def start_engine(model: Path, work: Workload, is_mtgr: bool, max_model_len: int):
    """An `AsyncLLM` for `model` and a source of random histories for it."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    config = json.loads((model / "config.json").read_text())
    vocab = config["num_items"] if is_mtgr else config["vocab_size"] - 1
    args = engine_kwargs(model, work, max_model_len, tokenizer=is_mtgr)
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
    return engine, Histories(is_mtgr, vocab, random.Random(max_model_len))


async def retrieval_section(
    model: Path, work: Workload, is_mtgr: bool, rates: list[float]
) -> dict:
    """All retrieval measurements of one model, in one engine.

    `rates` are the Poisson arrival rates; empty: fractions of this model's
    own saturated requests/s (the HSTU model goes first, the Llama gets its
    rates).
    """
    longest = max(work.prefill_length, work.history + work.new_events)
    engine, histories = start_engine(model, work, is_mtgr, longest + 8)
    one_step = scoring_step(work)
    ids = iter(range(10**9))
    result: dict = {}
    try:
        # Warm-up: compile and capture on the shapes measured below, decode
        # steps too: the first decode steps after mtgr-8b's start took ~7 s
        # more than the next (H200, 2026-12-03).
        await asyncio.gather(*[
            _request(engine, histories.prompt(*histories.user(n)), one_step,
                     f"warm-{next(ids)}")
            for n in (work.prefill_length, work.history, work.history)
        ])  # fmt: skip
        start = time.perf_counter()
        await asyncio.gather(*[
            _request(engine, histories.prompt(*histories.user(work.history)),
                     decode_params(work), f"warm-{next(ids)}")
            for _ in range(2)
        ])  # fmt: skip
        # What a server's first multi-step requests after its start cost.
        result["first_decode_ms"] = 1e3 * (time.perf_counter() - start)

        prompts = [
            histories.prompt(*histories.user(work.prefill_length))
            for _ in range(work.prefill_prompts)
        ]
        start = time.perf_counter()
        await asyncio.gather(
            *[_request(engine, p, one_step, f"p-{next(ids)}") for p in prompts]
        )
        seconds = time.perf_counter() - start
        result["prefill_tokens_per_s"] = (
            work.prefill_prompts * work.prefill_length / seconds
        )

        prompts = [
            histories.prompt(*histories.user(work.history))
            for _ in range(work.saturation_requests)
        ]
        start = time.perf_counter()
        await asyncio.gather(
            *[_request(engine, p, one_step, f"s-{next(ids)}") for p in prompts]
        )
        result["requests_per_s"] = work.saturation_requests / (
            time.perf_counter() - start
        )
        result["decode_tokens_per_s"] = await decode_rate(engine, histories, work, ids)
        rates = rates or [f * result["requests_per_s"] for f in work.rate_fractions]
        result["rates"] = await latency_at_rates(engine, histories, work, rates, ids)
        result["returning"] = await returning_user(
            engine, histories, one_step, work, ids
        )
        result["returning_load"] = await returning_at_load(
            engine, histories, one_step, work, ids
        )
    finally:
        engine.shutdown()
    return result


def decode_params(work: Workload):
    """Several next items, greedy, ids only."""
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=work.decode_steps, temperature=0.0, detokenize=False,
        ignore_eos=True,
    )  # fmt: skip


async def decode_rate(engine, histories, work: Workload, ids) -> float:
    """Generated items/s: many users, several next items each (decode steps)."""
    params = decode_params(work)
    prompts = [
        histories.prompt(*histories.user(work.history))
        for _ in range(work.decode_users)
    ]
    start = time.perf_counter()
    await asyncio.gather(
        *[_request(engine, p, params, f"d-{next(ids)}") for p in prompts]
    )
    return work.decode_users * work.decode_steps / (time.perf_counter() - start)


async def returning_user(engine, histories, params, work: Workload, ids) -> dict:
    """Median latency of 1024 + 16 events: cold, and with the 1024 cached."""
    total = work.history + work.new_events
    cold, warm, cached = [], [], []
    for _ in range(work.returning_users):
        items, times = histories.user(total)
        seconds, _ = await timed(
            engine, histories.prompt(items, times), params, f"c-{next(ids)}"
        )
        cold.append(seconds)
        items, times = histories.user(total)
        first = histories.prompt(items[: work.history], times[: work.history])
        await _request(engine, first, params, f"w0-{next(ids)}")
        seconds, output = await timed(
            engine, histories.prompt(items, times), params, f"w-{next(ids)}"
        )
        warm.append(seconds)
        cached.append(output.num_cached_tokens)
    return {
        "cold_ms": 1e3 * statistics.median(cold),
        "warm_ms": 1e3 * statistics.median(warm),
        "warm_over_cold": statistics.median(warm) / statistics.median(cold),
        "cached_tokens": statistics.median(cached),
    }


async def returning_at_load(engine, histories, params, work: Workload, ids) -> dict:
    """Cost per request with many users at once: wall time of `load_users`
    cold 1040-event requests, against as many returning users (their 1024
    events cached just before, unmeasured) sending 1024 + 16."""

    async def serve_all(prompts: list[dict], tag: str) -> tuple[float, list]:
        start = time.perf_counter()
        outputs = await asyncio.gather(
            *[_request(engine, p, params, f"{tag}-{next(ids)}") for p in prompts]
        )
        return time.perf_counter() - start, outputs

    total = work.history + work.new_events
    users = [histories.user(total) for _ in range(work.load_users)]
    cold, _ = await serve_all([histories.prompt(*u) for u in users], "lc")
    users = [histories.user(total) for _ in range(work.load_users)]
    await serve_all(
        [histories.prompt(i[: work.history], t[: work.history]) for i, t in users],
        "lh",
    )
    warm, outputs = await serve_all([histories.prompt(*u) for u in users], "lw")
    return {
        "users": work.load_users,
        "cold_per_s": work.load_users / cold,
        "returning_per_s": work.load_users / warm,
        "cost_ratio": warm / cold,
        "cached_tokens": statistics.median(o.num_cached_tokens for o in outputs),
    }


async def arrive(engine, prompt: dict, params, request_id: str, delay: float):
    """Send `prompt` after `delay` seconds; its latency from then."""
    await asyncio.sleep(delay)
    return (await timed(engine, prompt, params, request_id))[0]


async def latency_at_rates(engine, histories, work: Workload, rates, ids) -> dict:
    """p50/p99 latency of ranking-style requests under Poisson arrivals."""
    params = scoring_step(work)
    rng = random.Random(2)
    rows = {}
    for rate in rates:
        prompts = [
            histories.prompt(*histories.user(work.history))
            for _ in range(work.rate_requests)
        ]
        delays, clock = [], 0.0
        for _ in prompts:
            clock += rng.expovariate(rate)
            delays.append(clock)
        start = time.perf_counter()
        latencies = await asyncio.gather(*[
            arrive(engine, prompt, params, f"r-{next(ids)}", delay)
            for prompt, delay in zip(prompts, delays, strict=True)
        ])  # fmt: skip
        wall = time.perf_counter() - start
        latencies = sorted(latencies)
        rows[f"{rate:.4g}"] = {
            "p50_ms": 1e3 * latencies[len(latencies) // 2],
            "p99_ms": 1e3 * latencies[min(len(latencies) - 1,
                                          int(0.99 * len(latencies)))],
            "achieved_per_s": len(latencies) / wall,
        }  # fmt: skip
    return rows


# --- the DLRMv3 peer workload -------------------------------------------------


def ranking_users(config: dict, work: Workload, rng: random.Random) -> list[dict]:
    """Peer users as the offline API takes them: NumPy arrays, no JSON."""
    gen = np.random.default_rng(rng.randrange(2**32))
    users = []
    for _ in range(work.peer_users):
        start = rng.randint(1_000_000_000, 1_700_000_000)
        times = np.sort(start + gen.integers(0, 90 * 86400, work.peer_history))
        candidates = work.peer_candidates
        users.append(
            {
                "profile": gen.integers(
                    0, config["profile_vocab_size"], config["num_profile_features"]
                ),
                "history": {
                    "items": gen.integers(1, config["num_items"], work.peer_history),
                    "timestamps": times,
                },
                "candidates": {
                    "items": gen.integers(1, config["num_items"], candidates),
                    "features": gen.random(
                        (candidates, config["num_cross_features"]), np.float32
                    ),
                },
                "request_timestamp": int(times[-1]) + 60,
            }
        )
    return users


def with_new_candidates(users: list[dict], config: dict, rng: random.Random):
    """The same users (same profile and history) with fresh candidates."""
    gen = np.random.default_rng(rng.randrange(2**32))
    out = []
    for user in users:
        count = len(user["candidates"]["items"])
        candidates = {
            "items": gen.integers(1, config["num_items"], count),
            "features": user["candidates"]["features"],
        }
        out.append({**user, "candidates": candidates})
    return out


def as_binary(user: dict) -> dict:
    """A peer user in the HTTP form: typed binary arrays (vllm_mtgr.arrays)."""
    from vllm_mtgr.arrays import encode_array

    def convert(value):
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return encode_array(value)
        return value

    return convert(user)


def peer_engine(model: Path, work: Workload, block_size: int | None = None):
    """(`LLM`, config, tokens per forward): room for every peer user in one step.

    Candidates are not prompt tokens: a step holds the users' histories; the
    tokens per forward count histories and candidates, as Meta's do."""
    from vllm import LLM

    config = json.loads((model / "config.json").read_text())
    history = config["num_profile_features"] + work.peer_history
    kwargs = engine_kwargs(model, work, history + 1)
    kwargs.update(
        max_num_batched_tokens=work.peer_users * history,
        max_num_seqs=work.peer_users,
        block_size=block_size,
    )
    kwargs.pop("max_logprobs")
    step_tokens = work.peer_users * (history + work.peer_candidates)
    return LLM(**kwargs), config, step_tokens


def peer_section(
    model: Path, work: Workload, block_size: int, in_process: bool
) -> dict:
    """The peer users through `LLM.encode`, its engine core in its own process
    (vLLM's default) or in this one. In its own process the core starts a
    step as soon as the first user arrives, while the others are still being
    added: 1 user, then 31 (seen with a print in the pooler, 2026-12-02). In
    this process all 32 are added before the one step.

    Cold and warm time one batch of `peer_users` alone: the latency of one
    forward with everything around it. Sustained sends `peer_sustained`
    batches in one call, as a user ranking many users would: with the core
    in its own process, rendering the next users overlaps the current step.

    Scores come back as lists (the default; every row before 2026-12-03),
    and in the `numpy_scores_*` fields as NumPy arrays (`scores_format`)."""
    if in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    llm, config, step_tokens = peer_engine(model, work, block_size)
    rng = random.Random(3)

    def rank(users: list[dict], scores_format: str = "lists") -> tuple[float, list]:
        data = [{**user, "scores_format": scores_format} for user in users]
        start = time.perf_counter()
        (output,) = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=False)
        seconds = time.perf_counter() - start
        return seconds, [r["num_cached_tokens"] for r in output.outputs["results"]]

    def sustained(scores_format: str) -> float:
        many = [
            user
            for _ in range(work.peer_sustained)
            for user in ranking_users(config, work, rng)
        ]
        seconds = rank(many, scores_format)[0] / work.peer_sustained
        return seconds * 32 / work.peer_users

    rank(ranking_users(config, work, rng))  # warm-up
    cold, warm, cached, cold_numpy = [], [], [], []
    for _ in range(work.peer_repeats):
        users = ranking_users(config, work, rng)
        cold.append(rank(users)[0])
        seconds, hits = rank(with_new_candidates(users, config, rng))
        warm.append(seconds)
        cached.append(statistics.median(hits))
        cold_numpy.append(rank(ranking_users(config, work, rng), "numpy")[0])
    cold_s, warm_s = statistics.median(cold), statistics.median(warm)
    scheduler = llm.llm_engine.vllm_config.scheduler_config
    sustained_s = sustained("lists")
    return {
        "block_size": block_size,
        "tokens_per_forward": step_tokens,
        "cold_ms": 1e3 * cold_s,
        "cold_tokens_per_s": step_tokens / cold_s,
        "warm_ms": 1e3 * warm_s,
        "warm_cached_tokens_per_user": statistics.median(cached),
        "cold_over_peer": 1e3 * cold_s / PEER_MS,
        "inputs": "NumPy arrays (offline API)",
        "candidates_are_tokens": False,
        "engine_core": "in process" if in_process else "own process",
        "sustained_ms_per_32_users": 1e3 * sustained_s,
        "sustained_tokens_per_s": step_tokens * 32 / work.peer_users / sustained_s,
        "async_scheduling": scheduler.async_scheduling,
        "numpy_scores_cold_ms": 1e3 * statistics.median(cold_numpy),
        "numpy_scores_sustained_ms_per_32_users": 1e3 * sustained("numpy"),
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def peer_server_section(model: Path, work: Workload) -> dict:
    """The peer users through `vllm-mtgr serve`'s `/pooling`, one user per
    request in typed binary fields, from `peer_users` concurrent clients."""
    import httpx

    config = json.loads((model / "config.json").read_text())
    history = config["num_profile_features"] + work.peer_history
    port = 8000 + random.Random().randrange(1000)
    gpu = torch.cuda.is_available()
    command = [
        sys.executable, "-m", "vllm_mtgr.cli", "serve", str(model),
        "--served-model-name", "peer", "--port", str(port), "--load-format", "dummy",
        "--dtype", work.dtype, "--max-model-len", str(history + 1),
        "--max-num-batched-tokens", str(work.peer_users * history),
        "--max-num-seqs", str(work.peer_users),
        "--block-size", str(ranking_block_size()),
        "--gpu-memory-utilization", str(work.gpu_memory_utilization),
        *([] if gpu else ["--enforce-eager"]),
        *(["--quantization", work.quantization] if work.quantization else []),
    ]  # fmt: skip
    log = Path(tempfile.gettempdir()) / "peer-server.log"
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        rng = random.Random(5)
        users = [
            as_binary(user)
            for _ in range(work.peer_repeats + 1)
            for user in ranking_users(config, work, rng)
        ]

        async def send_all(batch: list[bytes]) -> tuple[float, list[float]]:
            async with httpx.AsyncClient(timeout=600) as client:

                async def one(body: bytes) -> float:
                    start = time.perf_counter()
                    response = await client.post(
                        f"{base}/pooling", content=body,
                        headers={"Content-Type": "application/json"},
                    )  # fmt: skip
                    response.raise_for_status()
                    return time.perf_counter() - start

                start = time.perf_counter()
                latencies = await asyncio.gather(*[one(b) for b in batch])
                return time.perf_counter() - start, list(latencies)

        clients = work.peer_users

        def measure(scores_format: str) -> tuple[list[bytes], list[float], list[float]]:
            bodies = [
                json.dumps(
                    {"model": "peer", "data": {**user, "scores_format": scores_format}}
                ).encode()
                for user in users
            ]
            asyncio.run(send_all(bodies[:clients]))  # warm-up
            walls, latencies = [], []
            for first in range(clients, len(bodies), clients):
                wall, lat = asyncio.run(send_all(bodies[first : first + clients]))
                walls.append(wall)
                latencies += lat
            return bodies, walls, latencies

        # Scores as JSON lists (the default; the rows before 2026-12-03), then
        # as binary arrays (`scores_format`).
        bodies, walls, latencies = measure("lists")
        _, binary_walls, binary_latencies = measure("binary")
        return {
            "concurrent_clients": clients,
            "requests": len(latencies),
            "request_bytes": statistics.median(len(b) for b in bodies),
            "requests_per_s": len(latencies) / sum(walls),
            "p50_ms": 1e3 * _percentile(latencies, 0.5),
            "p99_ms": 1e3 * _percentile(latencies, 0.99),
            "wall_ms_per_32_users": 1e3 * statistics.median(walls) * 32 / clients,
            "binary_scores_requests_per_s": len(binary_latencies) / sum(binary_walls),
            "binary_scores_p50_ms": 1e3 * _percentile(binary_latencies, 0.5),
            "binary_scores_p99_ms": 1e3 * _percentile(binary_latencies, 0.99),
            "block_size": ranking_block_size(),
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def ranking_block_size() -> int:
    """The KV block size ranking engines are served with: 256 tokens on a GPU
    (the README's advice; 64 until 2026-12-03), 16 on the CPU."""
    return 256 if torch.cuda.is_available() else 16


def recsys_engine(model: Path, work: Workload, block_size: int | None = None):
    """The engine of NVIDIA recsys-examples' returning user, and two makers:
    `user()`, a new user's request (a long history of `recsys_cached` tokens,
    `recsys_new` new real-time events, `recsys_candidates` candidates), and
    `earlier(request)`, the same user before the new events. KV blocks of
    `block_size` tokens (default: `ranking_block_size()`)."""
    from vllm import LLM

    config = json.loads((model / "config.json").read_text())
    history = work.recsys_cached + work.recsys_new
    kwargs = engine_kwargs(model, work, history + 1)
    kwargs.update(
        max_num_batched_tokens=work.recsys_users * history,
        max_num_seqs=work.recsys_users,
        block_size=block_size or ranking_block_size(),
    )
    kwargs.pop("max_logprobs")
    llm = LLM(**kwargs)
    gen = np.random.default_rng(7)
    profile = config["num_profile_features"]

    def user() -> dict:
        long = work.recsys_cached - profile  # events: long history, then new
        times = np.sort(gen.integers(1_600_000_000, 1_700_000_000, history - profile))
        items = gen.integers(1, config["num_items"], history - profile)
        return {
            "profile": gen.integers(0, config["profile_vocab_size"], profile),
            "history": {"items": items[:long], "timestamps": times[:long]},
            "realtime": {"items": items[long:], "timestamps": times[long:]},
            "candidates": {
                "items": gen.integers(1, config["num_items"], work.recsys_candidates),
                "features": gen.random(
                    (work.recsys_candidates, config["num_cross_features"]), np.float32
                ),
            },
            "request_timestamp": int(times[-1]) + 60,
        }

    def earlier(request: dict) -> dict:
        return {**request, "realtime": None}

    return llm, user, earlier


def returning_ranking_section(model: Path, work: Workload) -> dict:
    """NVIDIA recsys-examples' returning user (`recsys_engine`),
    `recsys_users` at once, against the same requests cold (new users)."""
    llm, user, earlier = recsys_engine(model, work)

    def rank(requests: list[dict]) -> tuple[float, list[int]]:
        start = time.perf_counter()
        (output,) = llm.encode(
            {"data": requests}, pooling_task="plugin", use_tqdm=False
        )
        seconds = time.perf_counter() - start
        return seconds, [r["num_cached_tokens"] for r in output.outputs["results"]]

    rank([user() for _ in range(work.recsys_users)])  # warm-up
    cold, returning, cached = [], [], []
    for _ in range(work.peer_repeats):
        cold.append(rank([user() for _ in range(work.recsys_users)])[0])
        users = [user() for _ in range(work.recsys_users)]
        rank([earlier(u) for u in users])
        seconds, hits = rank(users)
        returning.append(seconds)
        cached.append(statistics.median(hits))
    cold_ms = 1e3 * statistics.median(cold)
    returning_ms = 1e3 * statistics.median(returning)
    return {
        "users": work.recsys_users,
        "cached": work.recsys_cached,
        "new": work.recsys_new,
        "candidates": work.recsys_candidates,
        "cold_ms": cold_ms,
        "returning_ms": returning_ms,
        "cold_over_returning": cold_ms / returning_ms,
        "cached_tokens_per_user": statistics.median(cached),
        "block_size": llm.llm_engine.vllm_config.cache_config.block_size,
    }


# --- driver -------------------------------------------------------------------


def run_section(name: str, work: Workload, models: dict, rates=()) -> dict:
    """One section in a fresh Python process; its result comes back as JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [
            sys.executable, __file__, "--section", name,
            "--work", json.dumps(asdict(work)), "--models", json.dumps(models),
            "--rates", json.dumps(list(rates)), "--result", result.name,
        ]  # fmt: skip
        # Run outside the checkout: vLLM inspects models in a `python -m`
        # subprocess, whose working directory comes first on sys.path.
        subprocess.run(command, check=True, cwd=tempfile.gettempdir())
        out = json.loads(Path(result.name).read_text())
    print(f"section {name}: {json.dumps(out)}", flush=True)  # kept if a later one fails
    return out


def section_main(args: argparse.Namespace) -> None:
    raw = json.loads(args.work)
    tuples = {k: tuple(raw[k]) for k in ("rate_fractions", "peer_block_sizes")}
    work = Workload(**{**raw, **tuples})
    models = {k: Path(v) for k, v in json.loads(args.models).items()}
    rates = json.loads(args.rates)
    kind, _, arg = args.section.partition(":")
    if kind == "retrieval":
        out = asyncio.run(retrieval_section(models[arg], work, arg == "mtgr", rates))
    elif kind == "peer":
        size, in_process = arg.split(":")  # peer:BLOCK:IN_PROCESS (0 or 1)
        out = peer_section(models["ranking"], work, int(size), in_process == "1")
    elif kind == "peer-server":
        out = peer_server_section(models["ranking"], work)
    else:
        out = returning_ranking_section(models["recsys"], work)
    Path(args.result).write_text(json.dumps(out))


def header() -> str:
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (
        f"device: {device}; torch {torch.__version__}; vllm {vllm.__version__}; "
        f"python {platform.python_version()}; date {time.strftime('%Y-%m-%d')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(SECTIONS))
    parser.add_argument("--quantization", help="vLLM's, for every engine: fp8")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    for hidden in ("--work", "--models", "--rates", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        section_main(args)
        return

    work = replace(SMOKE if args.smoke else Workload(), quantization=args.quantization)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mtgr = write_mtgr(work.retrieval_preset, tmp / "mtgr", work.dtype)
        models = {
            "mtgr": str(mtgr),
            "llama": str(write_llama(mtgr, tmp / "llama", work.dtype)),
            "ranking": str(
                write_mtgr(work.ranking_preset, tmp / "ranking", work.dtype)
            ),
            "recsys": str(write_mtgr(work.recsys_preset, tmp / "recsys", work.dtype)),
        }
        report, raw = run(work, models, args.skip)
    text = "\n\n".join([f"# End-to-end serving through vLLM\n\n{header()}", *report])
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"serve-{'smoke-' if args.smoke else ''}{time.strftime('%Y%m%d')}"
    if args.skip:  # a partial run: name the sections it has
        stem += "-" + "-".join(s for s in SECTIONS if s not in args.skip)
    if args.quantization:
        stem += f"-{args.quantization}"
    (args.out / f"{stem}.md").write_text(text + "\n")
    raw["header"] = header()
    (args.out / f"{stem}.json").write_text(json.dumps(raw, indent=2))


def run(work: Workload, models: dict, skip: list[str]) -> tuple[list[str], dict]:
    """(markdown sections, raw results by section) of every section not skipped."""
    report = [f"Workload: `{json.dumps(asdict(work))}`"]
    raw: dict = {"workload": asdict(work)}
    names = {"mtgr": work.retrieval_preset, "llama": "Llama, same width/depth"}
    if "retrieval" not in skip:
        results = {"mtgr": run_section("retrieval:mtgr", work, models)}
        rates = [float(rate) for rate in results["mtgr"]["rates"]]
        results["llama"] = run_section("retrieval:llama", work, models, rates)
        raw["retrieval"] = results
        rows = [
            {
                "model": names[m],
                "prefill tok/s": r["prefill_tokens_per_s"],
                "ranking-style req/s": r["requests_per_s"],
                "decode items/s": r["decode_tokens_per_s"],
                "returning ms": r["returning"]["warm_ms"],
                "cold ms": r["returning"]["cold_ms"],
                "returning / cold": r["returning"]["warm_over_cold"],
                "cached tokens": r["returning"]["cached_tokens"],
                "at load: returning req/s": r["returning_load"]["returning_per_s"],
                "cold req/s": r["returning_load"]["cold_per_s"],
                "cost returning / cold": r["returning_load"]["cost_ratio"],
                "first decode ms": r["first_decode_ms"],
            }
            for m, r in results.items()
        ]
        report.append(
            f"## Retrieval: prefill ({work.prefill_prompts} x {work.prefill_length} "
            f"tokens), ranking-style requests ({work.history} events, top "
            f"{work.top_k}), decode ({work.decode_users} users x "
            f"{work.decode_steps} next items), returning user ({work.history} "
            f"cached + {work.new_events} new; alone, and {work.load_users} users "
            f"at once)\n\n" + markdown_table(rows, list(rows[0]))
        )
        rows = [
            {"model": names[m], "rate /s": float(rate), **row}
            for m, r in results.items()
            for rate, row in r["rates"].items()
        ]
        report.append(
            "## Latency under Poisson arrivals (rates: fractions of the HSTU "
            "model's saturated requests/s)\n\n" + markdown_table(rows, list(rows[0]))
        )
    if "peer" not in skip:
        peer = [
            run_section(f"peer:{size}:{spec}", work, models)
            for size in work.peer_block_sizes
            # The engine core in its own process (vLLM's default), in this one.
            # Async scheduling (own process, 2026-12-03): 75.5 ms cold, 1,058
            # ms per 32 users sustained; vLLM keeps it off for pooling models.
            for spec in ("0", "1")
        ]
        raw["peer"] = peer
        report.append(
            f"## DLRMv3 peer workload: {work.peer_users} users x "
            f"({work.peer_history} history + {work.peer_candidates} candidates), "
            f"`{work.ranking_preset}`, offline API; Meta's DLRMv3: {PEER_MS} ms "
            f"per forward, {PEER_TOKENS_PER_S / 1e6:.1f} M tokens/s\n\n"
            + markdown_table(peer, list(peer[0]))
        )
    if "peer-server" not in skip:
        server = run_section("peer-server", work, models)
        raw["peer_server"] = server
        report.append(
            "## The same users through `/pooling`: one user per request, typed "
            f"binary fields, {work.peer_users} concurrent clients; scores as "
            "JSON lists, then as binary arrays (`binary_scores_*`)\n\n"
            + markdown_table([server], list(server))
        )
    if "recsys" not in skip:
        recsys = run_section("recsys", work, models)
        raw["recsys_returning"] = recsys
        report.append(
            f"## Returning user, recsys-examples' shape (`{work.recsys_preset}`): "
            f"{work.recsys_users} users, {work.recsys_cached} cached + "
            f"{work.recsys_new} new events, {work.recsys_candidates} candidates"
            "\n\n" + markdown_table([recsys], list(recsys))
        )
    return report, raw


if __name__ == "__main__":
    main()
