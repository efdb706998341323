"""The Triton kernels equal dense HSTU attention, on fresh random inputs.

On a machine without a GPU they run under Triton's interpreter
(`TRITON_INTERPRET=1`, fp32, small shapes); on a GPU the same tests run the
compiled kernels in bf16 and fp16 (`benchmarks/kernels.py` covers real shapes).
"""

from __future__ import annotations

import random

import pytest
import torch

# conftest.py switches Triton to its interpreter on a machine without a GPU.
triton = pytest.importorskip("triton", reason="needs the triton package")

from attention_cases import (  # noqa: E402
    make_candidate_case,
    make_case,
    relative_error,
)

from vllm_mtgr.kernels.paged_torch import (  # noqa: E402
    kernel_bias_tables,
    write_kv_cache,
)
from vllm_mtgr.kernels.paged_triton import (  # noqa: E402
    candidate_attention_triton,
    gated_layer_norm,
    hstu_attention_triton,
    write_kv_cache_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float32]
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}

CASES = {
    # name: (sequence lengths, query lengths, context ends, candidate starts)
    "ragged_prefill": ([37, 5, 70, 1], [37, 5, 70, 1], None, None),
    "cached_prefix_and_chunk": ([48, 90], [16, 40], None, None),
    "block_boundaries": ([16, 32, 15, 17], [16, 2, 15, 1], None, None),
    "mixed_prefill_and_decode": ([33, 12, 64], [1, 12, 1], None, None),
    "mtgr_masks": ([60, 45, 170], [60, 45, 100], [20, 10, 40], [50, 30, 90]),
    "candidates_only_after_cache": ([200], [150], [20], [50]),
}


def _seed() -> int:
    return random.randrange(2**31)


# KV block sizes: a key tile spans pages (16), is one page (64), or one part
# of a page (128, and 256 as ranking models are served on a GPU).
PAGES = [16, 64, 128, 256]


# Tile shapes (tiles of 128 rows have no position box: `BOX_ROWS`), and the
# path of GPUs without TMA: tables without the box, so that every tile reads
# its rows' runs.
TILES = ["default", "rows_of_128", "no_box"]


def _tile_args(tile: str, case) -> dict:
    if tile == "rows_of_128":
        return dict(prefill_config=(128, 64, 8, 2))
    if tile == "no_box":
        tables = kernel_bias_tables(case.pos_w, case.ts_w)
        return dict(bias_tables=tables._replace(position_box=None))
    return {}


def _check_prefill(
    name: str, page: int, dtype, tile: str, key_limits: bool = True
) -> None:
    seq_lens, query_lens, contexts, candidates = CASES[name]
    seed = _seed()
    case = make_case(
        seq_lens,
        query_lens,
        context_ends=contexts,
        candidate_starts=candidates,
        block_size=page,
        dtype=dtype,
        device=DEVICE,
        generator=torch.Generator().manual_seed(seed),
        key_limits=key_limits,
    )
    got = case.run(hstu_attention_triton, max(query_lens), **_tile_args(tile, case))
    assert not got.isnan().any(), f"seed {seed}: unwritten output"
    assert relative_error(got, case.expected) < TOLERANCE[dtype], f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"page{p}")
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("tile", TILES)
def test_prefill_kernel(name, page, dtype, tile):
    _check_prefill(name, page, dtype, tile)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", [16, 64], ids=lambda p: f"page{p}")
@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[2] is None))
@pytest.mark.parametrize("tile", TILES)
def test_prefill_kernel_for_causal_models(name, page, dtype, tile):
    """Models without key limits (retrieval, semantic IDs) take the prefill
    kernel compiled for causal rows only (with the position box, and without
    it, as on GPUs before Hopper)."""
    _check_prefill(name, page, dtype, tile, key_limits=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"page{p}")
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_kernel_with_key_splits(dtype, splits, page):
    seed = _seed()
    case = make_case(
        [17, 1, 70, 133],
        [1, 1, 1, 1],
        candidate_starts=[None, None, 60, None],
        block_size=page,
        dtype=dtype,
        device=DEVICE,
        generator=torch.Generator().manual_seed(seed),
    )
    got = case.run(hstu_attention_triton, 1, num_splits=splits)
    assert not got.isnan().any(), f"seed {seed}"
    assert relative_error(got, case.expected) < TOLERANCE[dtype], f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("query_len", [1, 9])
def test_kernels_read_the_precomputed_tables(dtype, query_len):
    """The model's kernel tables, made once after loading, replace the raw
    ones: with the raw tables poisoned, results still equal the reference."""
    seed = _seed()
    case = make_case(
        [40, 9],
        [query_len, query_len],
        dtype=dtype,
        device=DEVICE,
        generator=torch.Generator().manual_seed(seed),
    )
    tables = kernel_bias_tables(case.pos_w, case.ts_w)
    case.pos_w = torch.full_like(case.pos_w, float("nan"))
    case.ts_w = torch.full_like(case.ts_w, float("nan"))
    got = case.run(hstu_attention_triton, query_len, bias_tables=tables)
    assert relative_error(got, case.expected) < TOLERANCE[dtype], f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
# 25: Meta's HSTU-large; 7/13: odd and dqk != dv (tiles padded to 16/32).
@pytest.mark.parametrize(
    ("dqk", "dv"), [(32, 32), (50, 50), (16, 24), (25, 25), (7, 13)]
)
def test_head_dims(dtype, dqk, dv):
    seed = _seed()
    case = make_case(
        [40, 9],
        [20, 9],
        dqk=dqk,
        dv=dv,
        dtype=dtype,
        device=DEVICE,
        generator=torch.Generator().manual_seed(seed),
    )
    got = case.run(hstu_attention_triton, 20)
    assert relative_error(got, case.expected) < TOLERANCE[dtype], f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"page{p}")
@pytest.mark.parametrize(
    ("history_lens", "counts", "dqk", "dv"),
    [
        ([40, 7, 100], [9, 1, 70], 16, 24),
        ([16, 33], [64, 65], 32, 32),
        ([130], [3], 50, 50),
        ([70, 5], [9, 4], 25, 25),
    ],
    ids=["ragged", "tile_boundaries", "odd_head_dim", "hstu_large_heads"],
)
@pytest.mark.parametrize("at_request_time", [False, True], ids=["anytime", "now"])
@pytest.mark.parametrize("silu_inputs", [False, True], ids=["activated", "raw"])
def test_candidate_kernel(
    dtype, page, history_lens, counts, dqk, dv, at_request_time, silu_inputs
):
    seed = _seed()
    case = make_candidate_case(
        history_lens,
        counts,
        block_size=page,
        dqk=dqk,
        dv=dv,
        dtype=dtype,
        device=DEVICE,
        generator=torch.Generator().manual_seed(seed),
        at_request_time=at_request_time,
        pre_activation=silu_inputs,
    )
    got = case.run(candidate_attention_triton, silu_inputs=silu_inputs)
    assert not got.isnan().any(), f"seed {seed}: unwritten output"
    assert relative_error(got, case.expected) < TOLERANCE[dtype], f"seed {seed}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("gate", ["none", "plain", "silu"])
def test_gated_layer_norm(dtype, affine, gate):
    heads, dv, width = 3, 24, 32
    attention = torch.randn(7, heads, width, device=DEVICE, dtype=dtype)
    u = torch.randn(7, heads * dv, device=DEVICE, dtype=dtype)
    weight = torch.randn(heads * dv, device=DEVICE) if affine else None
    bias = torch.randn(heads * dv, device=DEVICE) if affine else None
    values = attention[..., :dv].reshape(7, heads * dv).float()
    expected = torch.nn.functional.layer_norm(
        values, [heads * dv], weight, bias, eps=1e-6
    )
    if gate == "plain":
        expected = u.float() * expected
    elif gate == "silu":
        expected = torch.nn.functional.silu(u.float()) * expected
    got = gated_layer_norm(
        attention, dv, None if gate == "none" else u, 1e-6, weight, bias,
        silu_gate=gate == "silu",
    )  # fmt: skip
    assert relative_error(got, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kv_cache_write_equals_the_pytorch_write(dtype):
    generator = torch.Generator().manual_seed(_seed())
    blocks, heads, page, hs, tokens = 6, 3, 16, 24, 40
    # The cache as vLLM may lay it out physically: heads outermost.
    storage = torch.randn(heads, blocks, page, 2 * hs, generator=generator)
    expected = storage.permute(1, 0, 2, 3).to(DEVICE, dtype)
    got = expected.clone(memory_format=torch.preserve_format)
    key = torch.randn(tokens + 5, heads, hs, generator=generator).to(DEVICE, dtype)
    value = torch.randn(tokens + 5, heads, hs, generator=generator).to(DEVICE, dtype)
    slots = torch.randperm(blocks * page, generator=generator)[:tokens]
    slots[::7] = -1  # padded tokens are skipped
    slots = slots.to(DEVICE)
    write_kv_cache(key, value, expected, slots)
    write_kv_cache_triton(key, value, got, slots)
    assert torch.equal(got, expected)


@pytest.mark.skipif(
    DEVICE != "cuda", reason="Triton's interpreter compiles nothing: needs a GPU"
)
def test_batch_sizes_compile_no_new_kernels():
    """Batches of 1, 3 and 16 requests (16: a multiple of 16, which Triton
    would specialise) run the kernels compiled for the first one."""
    from vllm_mtgr.kernels import paged_triton

    kernels = [paged_triton._prefill_kernel, paged_triton._decode_kernel,
               paged_triton._write_kv_kernel]  # fmt: skip
    device = torch.cuda.current_device()
    counts = []
    for requests in (3, 1, 16):
        generator = torch.Generator().manual_seed(_seed())
        for query_len in (24, 1):
            # One head of 24: the decode kernel's partial sums' stride is
            # 24 x requests (384 at 16 requests).
            case = make_case([40] * requests, [query_len] * requests, heads=1,
                             dtype=torch.bfloat16, device=DEVICE,
                             generator=generator)  # fmt: skip
            got = case.run(hstu_attention_triton, query_len)
            assert relative_error(got, case.expected) < TOLERANCE[torch.bfloat16]
        tokens = 5 * requests  # 80 at 16 requests
        key = torch.randn(tokens, 2, 32, device=DEVICE, dtype=torch.bfloat16)
        cache = torch.zeros(tokens, 2, 1, 64, device=DEVICE, dtype=torch.bfloat16)
        write_kv_cache_triton(key, key, cache, torch.arange(tokens, device=DEVICE))
        counts.append([len(k.device_caches[device][0]) for k in kernels])
    assert counts[0] == counts[1] == counts[2], counts
