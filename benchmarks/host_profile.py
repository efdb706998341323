"""Where a request's time goes: host functions and device kernels.

    python benchmarks/host_profile.py peer --out DIR        # DLRMv3 peer forward
    python benchmarks/host_profile.py returning --out DIR   # retrieval, cold/returning
    python benchmarks/host_profile.py recsys --out DIR      # ranking, cold/returning
    python benchmarks/host_profile.py decode --out DIR      # retrieval, next items

Runs vLLM with its engine core in this process (no fork), so one cProfile
sees the front end, the scheduler, the model runner and the waits on the
device, and one torch profiler run sums the device's kernel time. Prints and
writes (markdown) per workload: wall time per call, device kernel time per
call, the top host functions by own and by cumulative time, and the top
kernels. `serve.py` gives the same workloads' throughput; this says why.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path

TOP = 25
REPEATS = 3
# Ranking results as the offline API's fastest format (`scores_format`):
# JSON-style lists cost 4.2 ms per 32 peer users (H200 host, 2026-12-03).
SCORES_FORMAT = "numpy"
# Stages of one call, timed by wrapping these methods while the unprofiled
# wall times run: (module, class, method). Nested stages (the model runner's
# parts inside `execute_model`) count inside their parent too. The model
# runner's `execute_model` ends in the pooler's wait for the device.
STAGES = (
    ("vllm_mtgr.renderer", "MTGRRenderer", "process_for_engine"),
    ("vllm.v1.engine.llm_engine", "LLMEngine", "add_request"),
    ("vllm.v1.core.sched.scheduler", "Scheduler", "schedule"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "execute_model"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_update_states"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_execute_mm_encoder"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_prepare_inputs"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_model_forward"),
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "_pool"),
    ("vllm.v1.core.sched.scheduler", "Scheduler", "update_from_output"),
    ("vllm.v1.engine.output_processor", "OutputProcessor", "process_outputs"),
)


class StageTimer:
    """Seconds and calls of the `STAGES` run while `timing` is set (the
    calls measured, not their setup)."""

    def __init__(self) -> None:
        self.timing = False
        self.totals: dict[str, list[float]] = {}

    @contextmanager
    def installed(self) -> Iterator[StageTimer]:
        restore = []
        for module, cls_name, method in STAGES:
            cls = getattr(import_module(module), cls_name)
            original = cls.__dict__.get(method)
            if original is None:  # not in this vLLM version
                continue
            row = self.totals.setdefault(f"{cls_name}.{method}", [0.0, 0])
            setattr(cls, method, self._timed(original, row))
            restore.append((cls, method, original))
        try:
            yield self
        finally:
            for cls, method, original in restore:
                setattr(cls, method, original)

    def _timed(self, original: Callable, row: list[float]) -> Callable:
        def timed(*args, **kwargs):
            if not self.timing:
                return original(*args, **kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                row[0] += time.perf_counter() - start
                row[1] += 1

        return timed


def profile_calls(
    call: Callable[[], None], repeats: int, setup: Callable[[], None] = lambda: None
) -> dict:
    """Wall ms per `call` (unprofiled), its cProfile rows, and on a GPU its
    device kernel ms and top kernels; `setup` runs before each call, unmeasured."""
    import torch

    walls = []
    with StageTimer().installed() as stages:
        for _ in range(repeats):
            setup()
            stages.timing = True
            start = time.perf_counter()
            call()
            walls.append(1e3 * (time.perf_counter() - start))
            stages.timing = False
    profiler = cProfile.Profile()
    for _ in range(repeats):
        setup()
        profiler.enable()
        call()
        profiler.disable()
    stats = pstats.Stats(profiler)
    result = {
        "wall_ms": statistics.median(walls),
        "stages": [
            (name, 1e3 * seconds / repeats, round(calls / repeats))
            for name, (seconds, calls) in stages.totals.items()
        ],
        "own": _rows(stats, "tottime", repeats),
        "cumulative": _rows(stats, "cumtime", repeats),
    }
    if torch.cuda.is_available():
        from torch.profiler import ProfilerActivity, profile

        kernels: dict[str, list[float]] = {}
        for _ in range(repeats):
            setup()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                call()
                torch.cuda.synchronize()
            for event in prof.key_averages():
                if event.self_device_time_total > 0:
                    row = kernels.setdefault(event.key, [0.0, 0])
                    row[0] += event.self_device_time_total / 1e3 / repeats
                    row[1] += event.count / repeats
        top = sorted(kernels.items(), key=lambda kv: -kv[1][0])
        result["device_ms"] = sum(ms for ms, _ in kernels.values())
        result["kernels"] = [(k, ms, round(n)) for k, (ms, n) in top[:TOP]]
    return result


def _rows(stats: pstats.Stats, key: str, repeats: int) -> list[tuple[str, float, int]]:
    """(function, ms per call, calls per call) of the top `TOP` by `key`."""
    index = {"tottime": 2, "cumtime": 3}[key]
    rows = []
    for (path, line, name), values in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{'/'.join(Path(path).parts[-2:])}:{line}({name})"
        rows.append((where, 1e3 * values[index] / repeats, values[1] // repeats))
    rows.sort(key=lambda r: -r[1])
    return rows[:TOP]


class InlineExecutor:
    """Renders requests in the calling thread, where cProfile sees it
    (`LLM.encode` maps its IO processor's `render` over a thread pool)."""

    def map(self, fn, *iterables):
        return map(fn, *iterables)


def peer(tmp: Path, serve, work, block_size: int | None) -> tuple[str, dict]:
    """The peer forward: 32 users x (1024 history + 2048 candidates), cold."""
    model = serve.write_mtgr(work.ranking_preset, tmp / "ranking", work.dtype)
    llm, config, _ = serve.peer_engine(model, work, block_size)
    llm._executor = InlineExecutor()
    rng = random.Random(3)
    batches: list[list[dict]] = []

    def new_users() -> None:
        users = serve.ranking_users(config, work, rng)
        batches.append([{**u, "scores_format": SCORES_FORMAT} for u in users])

    def call() -> None:
        llm.encode({"data": batches.pop()}, pooling_task="plugin", use_tqdm=False)

    new_users()
    call()  # warm-up
    title = (
        f"DLRMv3 peer forward: {work.peer_users} users x ({work.peer_history} "
        f"history + {work.peer_candidates} candidates), `{work.ranking_preset}`, "
        f"KV block size {llm.llm_engine.vllm_config.cache_config.block_size}, "
        f"scores as {SCORES_FORMAT}"
    )
    return title, {"peer forward": profile_calls(call, REPEATS, setup=new_users)}


def returning(tmp: Path, serve, work, block_size: int | None) -> tuple[str, dict]:
    """Retrieval requests of 1024 + 16 events: cold, and with 1024 cached;
    one request, then `work.load_users` at once (serve.py's "at load" row)."""
    from vllm import LLM

    model = serve.write_mtgr(work.retrieval_preset, tmp / "mtgr", work.dtype)
    total = work.history + work.new_events
    # Few sequences keep the sampler's warm-up logits ([seqs, 3.57 M items]
    # in fp32, several copies) small. With serve.py's 256, this in-process
    # engine found no memory left for its KV cache.
    llm = LLM(
        **serve.engine_kwargs(model, work, total + 8),
        max_num_seqs=max(8, work.load_users),
        block_size=block_size,
    )
    config = json.loads((model / "config.json").read_text())
    histories = serve.Histories(True, config["num_items"], random.Random(4))
    params = serve.scoring_step(work)
    batch: list[dict] = []
    cached: list[int] = []

    def new_users(count: int) -> Callable[[], None]:
        def setup() -> None:
            batch[:] = [histories.prompt(*histories.user(total)) for _ in range(count)]

        return setup

    def cache_histories(count: int) -> Callable[[], None]:
        """Each of `count` users' first `work.history` events served, unmeasured;
        then the whole history is the batch."""

        def setup() -> None:
            users = [histories.user(total) for _ in range(count)]
            firsts = [
                histories.prompt(i[: work.history], t[: work.history]) for i, t in users
            ]
            llm.generate(firsts, params, use_tqdm=False)
            batch[:] = [histories.prompt(*user) for user in users]

        return setup

    def serve_batch() -> None:
        outputs = llm.generate(batch, params, use_tqdm=False)
        cached.extend(output.num_cached_tokens for output in outputs)

    users = work.load_users
    new_users(1)()
    serve_batch()  # warm-up
    results = {
        f"cold, {total} events": profile_calls(serve_batch, REPEATS, new_users(1)),
        f"returning, {work.history} cached + {work.new_events} new": profile_calls(
            serve_batch, REPEATS, cache_histories(1)
        ),
        f"{users} users at once, cold": profile_calls(
            serve_batch, REPEATS, new_users(users)
        ),
        f"{users} users at once, returning": profile_calls(
            serve_batch, REPEATS, cache_histories(users)
        ),
    }
    # Cached tokens of the returning requests (cold ones have none).
    cached = [n for n in cached if n]
    title = (
        f"Retrieval requests, `{work.retrieval_preset}`, top {work.top_k}: "
        f"cold and returning (median {statistics.median(cached)} tokens cached), "
        f"KV block size {llm.llm_engine.vllm_config.cache_config.block_size}"
    )
    return title, results


def recsys(tmp: Path, serve, work, block_size: int | None) -> tuple[str, dict]:
    """NVIDIA recsys-examples' returning user (`serve.recsys_engine`): its
    users cold, and the same shape with the long history cached by an
    earlier request."""
    model = serve.write_mtgr(work.recsys_preset, tmp / "recsys", work.dtype)
    llm, user, earlier = serve.recsys_engine(model, work, block_size)
    llm._executor = InlineExecutor()
    batches: list[list[dict]] = []

    def rank() -> None:
        llm.encode({"data": batches.pop()}, pooling_task="plugin", use_tqdm=False)

    def new_user() -> dict:
        return {**user(), "scores_format": SCORES_FORMAT}

    def new_users() -> None:
        batches.append([new_user() for _ in range(work.recsys_users)])

    def returning_users() -> None:
        users = [new_user() for _ in range(work.recsys_users)]
        llm.encode(
            {"data": [earlier(u) for u in users]}, pooling_task="plugin",
            use_tqdm=False,
        )  # fmt: skip
        batches.append(users)

    new_users()
    rank()  # warm-up
    results = {
        f"cold, {work.recsys_users} users": profile_calls(
            rank, REPEATS, setup=new_users
        ),
        f"returning, {work.recsys_users} users": profile_calls(
            rank, REPEATS, setup=returning_users
        ),
    }
    title = (
        f"recsys-examples' returning user, `{work.recsys_preset}`: "
        f"{work.recsys_users} users x ({work.recsys_cached} cached + "
        f"{work.recsys_new} new events, {work.recsys_candidates} candidates), "
        f"KV block size {llm.llm_engine.vllm_config.cache_config.block_size}, "
        f"scores as {SCORES_FORMAT}"
    )
    return title, results


def decode(tmp: Path, serve, work, block_size: int | None) -> tuple[str, dict]:
    """Many users' next items: each user's history and 1 item, then the same
    with `decode_steps` items; the difference is the decode steps."""
    from vllm import LLM, SamplingParams

    model = serve.write_mtgr(work.retrieval_preset, tmp / "mtgr", work.dtype)
    length = work.history + work.decode_steps
    llm = LLM(
        **serve.engine_kwargs(model, work, length + 8),
        max_num_seqs=work.decode_users,
        block_size=block_size,
    )
    config = json.loads((model / "config.json").read_text())
    histories = serve.Histories(True, config["num_items"], random.Random(5))
    batches: list[list[dict]] = []

    def new_users() -> None:
        batches.append(
            [
                histories.prompt(*histories.user(work.history))
                for _ in range(work.decode_users)
            ]
        )

    def items(count: int) -> Callable[[], None]:
        params = SamplingParams(
            max_tokens=count, temperature=0.0, detokenize=False, ignore_eos=True
        )
        return lambda: llm.generate(batches.pop(), params, use_tqdm=False)

    new_users()
    items(work.decode_steps)()  # warm-up
    results = {
        f"{work.decode_users} users, 1 item": profile_calls(
            items(1), REPEATS, setup=new_users
        ),
        f"{work.decode_users} users, {work.decode_steps} items": profile_calls(
            items(work.decode_steps), REPEATS, setup=new_users
        ),
    }
    title = (
        f"Decode, `{work.retrieval_preset}`: {work.decode_users} users x "
        f"{work.history} events, 1 and {work.decode_steps} next items "
        f"(greedy, seen items excluded), KV block size "
        f"{llm.llm_engine.vllm_config.cache_config.block_size}"
    )
    return title, results


def report(title: str, results: dict) -> str:
    parts = [
        f"## {title}",
        "Wall times are unprofiled; host function times come from cProfile, "
        "whose own overhead makes Python-heavy code look up to ~2x slower.",
    ]
    for name, r in results.items():
        device = f", device kernels {r['device_ms']:.1f} ms" if "device_ms" in r else ""
        parts.append(f"### {name}: wall {r['wall_ms']:.1f} ms per call{device}")
        lines = ["| stage (unprofiled) | ms per call | calls |", "|---|---|---|"]
        lines += [f"| `{s}` | {ms:.2f} | {n} |" for s, ms, n in r["stages"]]
        parts.append("\n".join(lines))
        for key, label in (("own", "own time"), ("cumulative", "cumulative time")):
            lines = [
                f"| host function ({label}) | ms per call | calls |",
                "|---|---|---|",
            ]
            lines += [f"| `{f}` | {ms:.2f} | {n} |" for f, ms, n in r[key]]
            parts.append("\n".join(lines))
        if "kernels" in r:
            lines = ["| device kernel | ms per call | launches |", "|---|---|---|"]
            lines += [f"| `{k[:90]}` | {ms:.3f} | {n} |" for k, ms, n in r["kernels"]]
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workload", choices=["peer", "returning", "recsys", "decode"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes")
    parser.add_argument(
        "--block-size", type=int, help="KV cache block size (default: vLLM's)"
    )
    args = parser.parse_args()
    # One process: the engine core runs here, where the profilers see it.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import serve  # beside this file; it keeps kernels.py off the path

    work = serve.SMOKE if args.smoke else serve.Workload()
    with tempfile.TemporaryDirectory() as tmp:
        run = {"peer": peer, "returning": returning, "recsys": recsys,
               "decode": decode}[args.workload]  # fmt: skip
        title, results = run(Path(tmp), serve, work, args.block_size)
    text = f"# Host profile\n\n{serve.header()}\n\n{report(title, results)}"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    smoke = "smoke-" if args.smoke else ""
    block = f"-block{args.block_size}" if args.block_size else ""
    stem = f"host-profile-{smoke}{args.workload}{block}-{time.strftime('%Y%m%d')}"
    (args.out / f"{stem}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
