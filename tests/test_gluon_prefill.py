"""The Hopper prefill kernel (`paged_gluon`) against dense float32 PyTorch.

GPU only: the Triton interpreter does not run Gluon kernels, and they
compile only for Hopper (sm_90).
"""

import pytest
import torch
from attention_cases import make_case, relative_error

from vllm_mtgr.kernels import kernel_bias_tables

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
pytestmark = pytest.mark.skipif(
    not HOPPER, reason="Gluon's Hopper kernel needs an sm_90 GPU (no interpreter)"
)
TOLERANCE = 2e-2  # bf16 / fp16 against float32


def _case(seq_lens, query_lens, page, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    case = make_case(seq_lens, query_lens, heads=2, dqk=128, dv=128, block_size=page,
                     max_len=2048, dtype=dtype, device="cuda", generator=generator,
                     key_limits=False)  # fmt: skip
    # Slots past each sequence in its last block may hold anything (freed
    # blocks): NaN there must not reach any output.
    for r, n in enumerate(case.seq_lens.tolist()):
        last = case.block_table[r, (n - 1) // page]
        case.kv_cache[last, :, n % page or page :] = float("nan")
    return case


def _run(case):
    from vllm_mtgr.kernels import paged_gluon

    assert paged_gluon.supports(case.query, case.kv_cache, case.params)
    out = torch.full((*case.query.shape[:2], case.params.cache_head_size),
                     float("nan"), dtype=case.query.dtype, device="cuda")  # fmt: skip
    tables = kernel_bias_tables(case.pos_w, case.ts_w)
    paged_gluon.hstu_prefill_gluon(
        case.query, case.kv_cache, case.block_table, case.query_start_loc,
        case.seq_lens, tables, case.params, out,
    )  # fmt: skip
    return out[..., : case.params.value_dim]


@pytest.mark.parametrize(
    "seq_lens, query_lens, page, dtype",
    [
        ([1024] * 3, [1024] * 3, 64, torch.bfloat16),
        ([37, 700, 1500, 64, 65, 1, 130], [37, 700, 1500, 64, 65, 1, 130], 64,
         torch.bfloat16),
        ([1000, 777, 300, 129], [100, 777, 1, 65], 64, torch.bfloat16),  # cached
        ([2000, 513, 70], [2000, 200, 70], 256, torch.bfloat16),
        ([900, 333], [900, 100], 64, torch.float16),
    ],
    ids=["full", "ragged", "cached_prefixes", "blocks_of_256", "fp16"],
)  # fmt: skip
def test_matches_dense_reference(seq_lens, query_lens, page, dtype):
    case = _case(seq_lens, query_lens, page, dtype, seed=sum(seq_lens))
    got = _run(case)
    assert not got.isnan().any()
    assert relative_error(got, case.expected) < TOLERANCE


def test_dispatch_and_cuda_graph_replay():
    """`hstu_attention` takes this kernel on Hopper, and a captured launch
    replays to the same bits."""
    from vllm_mtgr.kernels import hstu_attention, paged_gluon

    case = _case([300, 64], [300, 64], 64, torch.bfloat16, seed=5)
    tables = kernel_bias_tables(case.pos_w, case.ts_w)
    out = torch.zeros((*case.query.shape[:2], case.params.cache_head_size),
                      dtype=case.query.dtype, device="cuda")  # fmt: skip
    args = (case.query, case.kv_cache, case.block_table, case.query_start_loc,
            case.seq_lens, case.pos_w, case.ts_w, case.params, out, 300)  # fmt: skip
    compiled = len(paged_gluon._prefill_kernel.device_caches[0][0])
    hstu_attention(*args, bias_tables=tables)
    assert len(paged_gluon._prefill_kernel.device_caches[0][0]) >= max(compiled, 1)
    eager = out.clone()
    assert relative_error(eager[..., :128], case.expected) < TOLERANCE
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        hstu_attention(*args, bias_tables=tables)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


def test_batch_sizes_compile_no_new_kernels():
    """Batches of 1, 3 and 16 requests run the kernel compiled for the first."""
    from vllm_mtgr.kernels import paged_gluon

    counts = []
    for requests in (3, 1, 16):
        case = _case([130] * requests, [130] * requests, 64, torch.bfloat16,
                     seed=requests)  # fmt: skip
        assert relative_error(_run(case), case.expected) < TOLERANCE
        counts.append(len(paged_gluon._prefill_kernel.device_caches[0][0]))
    assert counts[0] == counts[1] == counts[2], counts
