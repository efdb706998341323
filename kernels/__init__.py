"""HSTU attention kernels over vLLM's paged KV cache, and their references.

`hstu_attention`, `candidate_attention`, `write_kv_cache` and
`gated_layer_norm` are the one interface the plugin calls: CUDA tensors run
the Triton kernels (`paged_triton`), anything else the PyTorch path
(`paged_torch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .paged_torch import HSTUAttentionParams, KernelBiasTables, kernel_bias_tables


def hstu_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    pos_w: torch.Tensor,
    ts_w: torch.Tensor,
    params: HSTUAttentionParams,
    output: torch.Tensor,
    max_query_len: int | None = None,
    bias_tables: KernelBiasTables | None = None,
) -> None:
    """HSTU attention of each query token over its request's cached keys.

    See `paged_torch` for the layout contract; writes `output[..., :value_dim]`.
    `max_query_len` (a host int) lets the GPU path pick its decode kernel;
    `bias_tables` (`kernel_bias_tables(pos_w, ts_w)`, kept by the caller)
    spare it building the tables on every call.
    """
    args = (query, kv_cache, block_table, query_start_loc, seq_lens, pos_w, ts_w)
    if query.is_cuda:
        from .paged_triton import hstu_attention_triton

        hstu_attention_triton(
            *args, params, output, max_query_len, bias_tables=bias_tables
        )
    else:
        from .paged_torch import hstu_paged_attention

        hstu_paged_attention(*args, params, output)


def candidate_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    times: torch.Tensor,
    limits: torch.Tensor,
    candidate_start: torch.Tensor,
    block_table: torch.Tensor,
    kv_cache: torch.Tensor,
    pos_w: torch.Tensor,
    ts_w: torch.Tensor,
    params: HSTUAttentionParams,
    output: torch.Tensor,
    bias_tables: KernelBiasTables | None = None,
    silu_inputs: bool = False,
) -> None:
    """Ranking candidates over their request's cached history and themselves.

    See `paged_torch.candidate_attention_torch`; writes `output` `[C, heads,
    value_dim]`. `silu_inputs`: `query`, `key` and `value` are the layer's
    projection before its SiLU, which the attention applies as it reads them.
    """
    args = (query, key, value, times, limits, candidate_start, block_table)
    args += (kv_cache, pos_w, ts_w, params, output)
    if query.is_cuda:
        from .paged_triton import candidate_attention_triton

        candidate_attention_triton(
            *args, bias_tables=bias_tables, silu_inputs=silu_inputs
        )
    else:
        from .paged_torch import candidate_attention_torch

        candidate_attention_torch(*args, silu_inputs=silu_inputs)


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store each token's key and value slots at `slot_mapping` (-1: skip)."""
    if key.is_cuda:
        from .paged_triton import write_kv_cache_triton as write
    else:
        from .paged_torch import write_kv_cache as write

    write(key, value, kv_cache, slot_mapping)


def gated_layer_norm(
    attention: torch.Tensor,
    value_dim: int,
    gate: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    silu_gate: bool = False,
) -> torch.Tensor:
    """`gate * (LayerNorm(attention[..., :value_dim]) * weight + bias)` over
    all heads of a token (no gate: the norm alone; no weight: no affine;
    `silu_gate`: the gate is `silu(gate)`).

    `attention` is `[T, heads, width]`; the result `[T, heads * value_dim]`.
    """
    if attention.is_cuda:
        from .paged_triton import gated_layer_norm as fused

        return fused(attention, value_dim, gate, eps, weight, bias, silu_gate)
    values = attention[..., :value_dim].reshape(attention.shape[0], -1)
    normed = F.layer_norm(values, values.shape[-1:], weight, bias, eps)
    if gate is None:
        return normed
    return (F.silu(gate) if silu_gate else gate) * normed


__all__ = [
    "HSTUAttentionParams",
    "KernelBiasTables",
    "candidate_attention",
    "gated_layer_norm",
    "kernel_bias_tables",
    "hstu_attention",
    "write_kv_cache",
]
