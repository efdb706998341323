"""Semantic-ID beam search: inside the engine (vllm-mtgr) against vLLM's own.

    python benchmarks/semantic.py --out benchmarks/results        # a GPU
    python benchmarks/semantic.py --cpu --widths 10 50 256 --users 8 8 2 \
        --alone 3 --repeats 1 --out benchmarks/results/cpu-20261203  # CPU
    python benchmarks/semantic.py --smoke --out /tmp/semantic     # CPU, tiny

One model, two ways of serving it, each in its own engine and process:
- ours: `MTGRForSemanticRetrieval`, the whole constrained beam search in the
  pooler of the step that completes a history (`vllm_mtgr.models.semantic`),
  through `LLM.encode`;
- vLLM's: the same directory as a causal LM (`MTGRForCausalLM`), decoded by
  `LLM.beam_search`, kept to real items by
  `vllm_mtgr.decoding.semantic_constraint` (without it vLLM's beams are any token
  tuples: most would be no item).
The model is a random HSTU (real weights in safetensors, Meta's checkpoint
format converted) over the codes of a random catalogue (residual k-means of
random item vectors), every event at time 0 (a token prompt has no times,
so both compute the same thing). At each beam width: requests/s with a batch
of users sent at once, the latency of one user's request alone (p50/p99),
invalid and seen items returned, and how far the two agree (top item, and
the overlap of their result lists). Prints a table and writes markdown +
JSON with device, versions and date.
"""

from __future__ import annotations

import argparse
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

import torch

HERE = Path(__file__).resolve().parent
# This folder's kernels.py would shadow the `kernels` package (see serve.py).
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
_report = importlib.util.spec_from_file_location("report", HERE / "report.py")
report = importlib.util.module_from_spec(_report)
_report.loader.exec_module(report)


CAPTURE_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass(frozen=True)
class Workload:
    items: int = 100_000
    levels: int = 3  # k-means levels; the codes have one more (unique) level
    codes_per_level: int = 256
    hidden_size: int = 512
    layers: int = 8
    heads: int = 4
    head_dim: int = 128
    history: int = 200  # events (tokens: events x code length)
    widths: tuple[int, ...] = (10, 50, 256)
    # Users per batch at each width: vLLM's beam search makes every beam a
    # request with 2 x width logprobs, so its wide batches are small.
    users: tuple[int, ...] = (64, 32, 8)
    repeats: int = 3
    alone: int = 20  # single-user requests for the latency percentiles
    dtype: str = "bfloat16"
    gpu_memory_utilization: float = 0.4


SMOKE = Workload(
    items=400, levels=2, codes_per_level=8, hidden_size=32, layers=2, heads=2,
    head_dim=16, history=20, widths=(4, 8), users=(4, 2), repeats=1, alone=3,
    dtype="float32", gpu_memory_utilization=0.3,
)  # fmt: skip


# Small enough for a CPU, a real catalogue's code shape (3 x 256 + unique).
CPU = replace(
    SMOKE, items=20_000, levels=3, codes_per_level=256, hidden_size=64,
    head_dim=32, history=50,
)  # fmt: skip


def write_model(work: Workload, out: Path) -> Path:
    """A random HSTU over a random catalogue's codes, as a semantic-ID model."""
    from vllm_mtgr.converters import semantic_ids
    from vllm_mtgr.converters.meta_hstu import ConversionOptions, convert
    from vllm_mtgr.kernels.reference import HSTUReference
    from vllm_mtgr.layout.code_trie import CodeTokens

    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(work.items, 32, generator=generator)
    ids = semantic_ids.build(vectors, work.levels, work.codes_per_level, seed=0)
    vocab = CodeTokens(ids.codes)
    torch.manual_seed(1)
    reference = HSTUReference(
        num_items=vocab.num_tokens, embedding_dim=work.hidden_size,
        num_blocks=work.layers, num_heads=work.heads,
        attention_dim=work.head_dim, linear_dim=work.head_dim,
        max_sequence_len=work.history * vocab.levels + vocab.levels,
    )  # fmt: skip
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.normal_(0.0, 0.2 if "_rel_attn_bias" in name else 0.05)
    out.mkdir(parents=True)
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"model_state_dict": state}, out / "hstu.pt")
    model_dir = convert(out / "hstu.pt", out / "model",
                        ConversionOptions(num_heads=work.heads))  # fmt: skip
    return semantic_ids.make_model(model_dir, ids, max_beam_width=max(work.widths))


def histories(work: Workload, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(1, work.items) for _ in range(work.history)]
            for _ in range(count)]  # fmt: skip


def engine(model: Path, work: Workload, causal: bool):
    from vllm import LLM

    from vllm_mtgr.converters import semantic_ids
    from vllm_mtgr.layout.code_trie import CodeTokens

    vocab = CodeTokens(semantic_ids.read(model).codes)
    tokens = work.history * vocab.levels + vocab.levels
    kwargs = dict(
        model=str(model), dtype=work.dtype, max_model_len=tokens,
        gpu_memory_utilization=work.gpu_memory_utilization,
        enable_prefix_caching=True, seed=0,
    )  # fmt: skip
    if causal:
        # Every beam of every user is a request of vLLM's beam search.
        kwargs.update(
            hf_overrides={"architectures": ["MTGRForCausalLM"]},
            logprobs_mode="processed_logits",
            max_logprobs=2 * max(work.widths),
            max_num_seqs=min(1024, max(map(int.__mul__, work.widths, work.users))),
        )
    else:
        kwargs.update(max_num_seqs=max(work.users),
                      max_num_batched_tokens=max(work.users) * tokens)  # fmt: skip
    if torch.cuda.is_available():
        # A few CUDA graph sizes, as in serve.py: a start in seconds.
        kwargs["compilation_config"] = {"cudagraph_capture_sizes": CAPTURE_SIZES}
    else:
        kwargs.update(enforce_eager=True, block_size=16)
    return LLM(**kwargs), vocab


def ours(llm, vocab, users: list[list[int]], width: int) -> list[list[int]]:
    data = [
        {"history": {"items": items, "timestamps": [0] * len(items)},
         "request_timestamp": 0, "beam_width": width}
        for items in users
    ]  # fmt: skip
    (output,) = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=False)
    return [result["items"] for result in output.outputs["results"]]


def vllms(llm, vocab, users: list[list[int]], width: int) -> list[list[int]]:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams

    if 2 * width > vocab.num_tokens:
        raise ValueError(
            f"vLLM's beam search asks for 2 x {width} logprobs of each beam: this "
            f"catalogue's codes have {vocab.num_tokens} tokens"
        )
    prompts = [TokensPrompt(prompt_token_ids=vocab.tokens(items)) for items in users]
    params = BeamSearchParams(beam_width=width, max_tokens=vocab.levels,
                              ignore_eos=True)  # fmt: skip
    found = []
    for output in llm.beam_search(prompts, params):
        tails = [s.tokens[-vocab.levels :] for s in output.sequences]
        found.append(vocab.items_of(torch.tensor(tails)).tolist())
    return found


def section(name: str, model: Path, work: Workload) -> dict:
    """One engine's measurements at every width, and its result lists."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # all requests in one step
    llm, vocab = engine(model, work, causal=name == "vllm")
    search = vllms if name == "vllm" else ours
    out: dict = {}
    for width, count in zip(work.widths, work.users, strict=True):
        # Warm-up at this width, alone and in a batch: kernels compile on
        # their first shapes.
        for warm in (1, count):
            search(llm, vocab, histories(work, warm, seed=99), width)
        times, lists = [], []
        for repeat in range(work.repeats):
            users = histories(work, count, seed=1000 * width + repeat)
            start = time.perf_counter()
            lists = search(llm, vocab, users, width)
            times.append(time.perf_counter() - start)
        alone = []
        for i in range(work.alone):
            user = histories(work, 1, seed=10**6 + 1000 * width + i)
            start = time.perf_counter()
            search(llm, vocab, user, width)
            alone.append(1e3 * (time.perf_counter() - start))
        pairs = zip(users, lists, strict=True)
        seen = [set(items) & set(found) for items, found in pairs]
        out[str(width)] = {
            "users": count,
            "requests_per_s": count / statistics.median(times),
            "alone_p50_ms": _percentile(alone, 0.5),
            "alone_p99_ms": _percentile(alone, 0.99),
            "invalid_items": sum(item == 0 for found in lists for item in found),
            "seen_items": sum(map(len, seen)),
            "short_lists": sum(len(found) < width for found in lists),
            "lists": lists,  # of the last repeat's users
        }
        brief = {k: v for k, v in out[str(width)].items() if k != "lists"}
        print(f"{name} width {width}: {json.dumps(brief)}", flush=True)
    return out


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_section(name: str, model: Path, work: Workload) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [
            sys.executable, __file__, "--section", name, "--model", str(model),
            "--work", json.dumps(asdict(work)), "--result", result.name,
        ]  # fmt: skip
        # Outside the checkout: vLLM inspects models in a `python -m`
        # subprocess, whose working directory comes first on sys.path.
        subprocess.run(command, check=True, cwd=tempfile.gettempdir())
        out = json.loads(Path(result.name).read_text())
    brief = {w: {k: v for k, v in r.items() if k != "lists"} for w, r in out.items()}
    print(f"section {name}: {json.dumps(brief)}", flush=True)  # kept if one fails
    return out


def header(limits: dict[str, float]) -> str:
    import vllm

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    measured = (
        f"; bf16 matmul {limits['matmul_tflops']:.0f} TFLOP/s, copy "
        f"{limits['copy_tbps']:.2f} TB/s (measured in this run)"
        if limits
        else ""
    )
    return (
        f"device: {device}; torch {torch.__version__}; vllm {vllm.__version__}; "
        f"python {platform.python_version()}; date {time.strftime('%Y-%m-%d')}"
        + measured
    )


def rows(work: Workload, results: dict) -> list[dict]:
    table = []
    for width in work.widths:
        a, b = results["ours"][str(width)], results["vllm"][str(width)]
        overlap = [len(set(x) & set(y)) / max(len(x), 1)
                   for x, y in zip(a["lists"], b["lists"], strict=True)]  # fmt: skip
        top = [x[:1] == y[:1] for x, y in zip(a["lists"], b["lists"], strict=True)]
        for name, r in (("vllm-mtgr (in the engine)", a), ("vLLM beam_search", b)):
            table.append({
                "beam width": width, "engine": name, "users": r["users"],
                "req/s": r["requests_per_s"], "alone p50 ms": r["alone_p50_ms"],
                "alone p99 ms": r["alone_p99_ms"], "invalid": r["invalid_items"],
                "seen": r["seen_items"], "short lists": r["short_lists"],
            })  # fmt: skip
        table.append({
            "beam width": width, "engine": "ours / vLLM",
            "req/s": a["requests_per_s"] / b["requests_per_s"],
            "alone p50 ms": a["alone_p50_ms"] / b["alone_p50_ms"],
            "alone p99 ms": a["alone_p99_ms"] / b["alone_p99_ms"],
            "invalid": f"same top item {sum(top)}/{len(top)}",
            "seen": f"overlap {statistics.mean(overlap):.3f}",
        })  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes")
    parser.add_argument("--cpu", action="store_true", help="CPU, a small model")
    parser.add_argument("--widths", type=int, nargs="*", help="beam widths")
    parser.add_argument("--users", type=int, nargs="*", help="users per width")
    parser.add_argument("--alone", type=int, help="single-user requests per width")
    parser.add_argument("--repeats", type=int, help="batches per width")
    for hidden in ("--section", "--model", "--work", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        raw = json.loads(args.work)
        work = Workload(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in raw.items()})  # fmt: skip
        out = section(args.section, Path(args.model), work)
        Path(args.result).write_text(json.dumps(out))
        return
    work = SMOKE if args.smoke else CPU if args.cpu else Workload()
    chosen = {"widths": args.widths, "users": args.users, "alone": args.alone,
              "repeats": args.repeats}  # fmt: skip
    work = replace(work, **{k: tuple(v) if isinstance(v, list) else v
                            for k, v in chosen.items() if v is not None})  # fmt: skip
    limits = report.ceilings() if torch.cuda.is_available() else {}
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(work, Path(tmp) / "semantic")
        results = {name: run_section(name, model, work) for name in ("ours", "vllm")}
    table = rows(work, results)
    text = (
        f"# Semantic-ID beam search: in the engine vs vLLM's beam_search\n\n"
        f"{header(limits)}"
        f"\n\nWorkload: `{json.dumps(asdict(work))}`\n\n"
        + report.markdown_table(table, list(table[0]))
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    preset = "smoke-" if args.smoke else "cpu-" if args.cpu else ""
    stem = f"semantic-{preset}{time.strftime('%Y%m%d')}"
    (args.out / f"{stem}.md").write_text(text + "\n")
    raw = {"header": header(limits), "workload": asdict(work), "rows": table,
           **limits}  # fmt: skip
    for name, result in results.items():
        raw[name] = {width: {k: v for k, v in r.items() if k != "lists"}
                     for width, r in result.items()}  # fmt: skip
    (args.out / f"{stem}.json").write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
