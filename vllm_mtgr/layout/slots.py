"""The byte-slot codec: how integers ride in the float slots of q and k.

HSTU's time bias needs every cached key's timestamp when later tokens attend
to it, so the model writes each key's time into `TIME_SLOTS` extra slots of
the key, one byte per slot: integers below 256 are exact in fp32, fp16 and
bf16, so the KV pages store them losslessly in any serving dtype. A query
carries its own time the same way, then its key limit (see
`kernels.paged_torch`) in `KEY_LIMIT_SLOTS` more. The bottom of the plugin's
dependencies: the kernels and the model both read it; it imports only torch.
"""

from __future__ import annotations

import torch

TIME_SLOTS = 4
KEY_LIMIT_SLOTS = 3
_BYTE_SHIFTS = (0, 8, 16, 24)


def byte_slots(
    values: torch.Tensor, dtype: torch.dtype, count: int = TIME_SLOTS
) -> torch.Tensor:
    """`[T]` ints -> `[T, count]` byte values, exact in any float dtype."""
    shifts = torch.tensor(_BYTE_SHIFTS[:count], device=values.device)
    return ((values.unsqueeze(-1).long() >> shifts) & 0xFF).to(dtype)


def time_slots(times: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[T]` int times -> `[T, TIME_SLOTS]` byte values."""
    return byte_slots(times, dtype, TIME_SLOTS)


def times_from_slots(slots: torch.Tensor) -> torch.Tensor:
    """Inverse of `byte_slots`: `[..., count]` floats -> `[...]` int64."""
    shifts = torch.tensor(_BYTE_SHIFTS[: slots.shape[-1]], device=slots.device)
    return (slots.to(torch.int64) << shifts).sum(-1)
