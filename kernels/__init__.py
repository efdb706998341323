"""HSTU attention kernels over vLLM's paged KV cache, and their references.

`hstu_attention` and `write_kv_cache` are the one interface the plugin calls;
they run the Triton kernels on CUDA tensors and the PyTorch path elsewhere.
"""

from __future__ import annotations

import torch

from .paged_torch import HSTUAttentionParams


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
    candidate_starts: torch.Tensor | None = None,
) -> None:
    """HSTU attention of each query token over its request's cached keys.

    See `paged_torch` for the layout contract; writes `output[..., :value_dim]`.
    """
    from .paged_torch import hstu_paged_attention

    hstu_paged_attention(
        query,
        kv_cache,
        block_table,
        query_start_loc,
        seq_lens,
        pos_w,
        ts_w,
        params,
        output,
        candidate_starts,
    )


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store each token's key and value slots at `slot_mapping` (-1: skip)."""
    from .paged_torch import write_kv_cache as write

    write(key, value, kv_cache, slot_mapping)


__all__ = ["HSTUAttentionParams", "hstu_attention", "write_kv_cache"]
