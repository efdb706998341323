"""Typed arrays in requests: the transport for heavy fields.

A ranking request carries thousands of candidates with a row of cross features
each. As JSON lists of numbers they cost the server milliseconds per user to
parse and type-check (2048 x 16 features: ~2 ms on an H100 host); as typed
binary arrays they cost a base64 decode and a view. Every array-valued request
field takes either form:

* a JSON list (of numbers, or of rows of numbers);
* over HTTP, an object ``{"dtype": "float16", "shape": [2048, 16], "data":
  "<base64 of the little-endian bytes, row-major>"}``;
* offline, a NumPy array or a CPU torch tensor, taken as it is.

`integers` and `floats` return NumPy arrays (int64, float32) whatever the form,
and name the field, and where it helps the row, in every error.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain

import numpy as np
import torch

try:
    # About 5x the standard library's speed on megabyte fields; vLLM 0.32
    # depends on it, vLLM 0.26's GPU host does not have it.
    import pybase64 as base64
except ImportError:
    import base64

from vllm_mtgr.errors import RequestError

INTEGER_DTYPES = {"int32": np.dtype("<i4"), "int64": np.dtype("<i8")}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# bfloat16 has no NumPy dtype: its bytes are the high half of a float32's.
FLOAT_DTYPES = {
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}
BINARY_KEYS = frozenset({"dtype", "shape", "data"})
# The largest magnitude a float16 model holds; larger cross features overflow
# the candidate MLP into infinities and NaN scores in 16-bit serving.
MAX_FEATURE_MAGNITUDE = 65504.0


def is_array(value: object) -> bool:
    """Whether `value` is a typed array (binary object, NumPy or tensor)."""
    return isinstance(value, (np.ndarray, torch.Tensor)) or (
        isinstance(value, Mapping) and set(value) == BINARY_KEYS
    )


def _from_binary(field: str, value: Mapping, dtypes: Mapping[str, np.dtype]):
    dtype_name = value["dtype"]
    if dtype_name not in dtypes:
        raise RequestError(
            f"`{field}.dtype` is {dtype_name!r}; this field takes {sorted(dtypes)}",
            field,
        )
    shape = value["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise RequestError(
            f"`{field}.shape` must be a list of non-negative integers", field
        )
    data = value["data"]
    if not isinstance(data, str):
        raise RequestError(f"`{field}.data` must be a base64 string", field)
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as error:
        raise RequestError(
            f"`{field}.data` is not valid base64: {error}", field
        ) from None
    dtype = dtypes[dtype_name]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise RequestError(
            f"`{field}.data` holds {len(raw)} bytes; {dtype_name} of shape {shape} "
            f"is {expected}",
            field,
        )
    # A bytearray, so the array is writable (torch warns on read-only ones).
    array = np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    if dtype_name == "bfloat16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _from_tensor(field: str, value: torch.Tensor) -> np.ndarray:
    if value.device.type != "cpu":
        raise RequestError(f"`{field}` must be a CPU tensor", field)
    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.detach().numpy()


def _typed(
    field: str, value: object, dtypes: Mapping[str, np.dtype], kind: str
) -> np.ndarray:
    """A typed array's values, its dtype checked against the field's kind."""
    if isinstance(value, torch.Tensor):
        array = _from_tensor(field, value)
    elif isinstance(value, np.ndarray):
        array = value
    else:
        return _from_binary(field, value, dtypes)  # type: ignore[arg-type]
    if array.dtype.kind not in kind:
        raise RequestError(
            f"`{field}` has dtype {array.dtype}; this field takes {sorted(dtypes)}",
            field,
        )
    return array


def _check_shape(field: str, array: np.ndarray, shape: tuple[int | None, ...]):
    if array.ndim != len(shape) or any(
        want is not None and got != want
        for got, want in zip(array.shape, shape, strict=True)
    ):
        wanted = ["any" if n is None else n for n in shape]
        raise RequestError(
            f"`{field}` has shape {list(array.shape)}; expected {wanted}", field
        )


def integers(field: str, value: object, low: int, high: int) -> np.ndarray:
    """A 1-D list or typed array of integers in [low, high], as int64."""
    if is_array(value):
        array = _typed(field, value, INTEGER_DTYPES, "iu")
        _check_shape(field, array, (None,))
        values = array.astype(np.int64, copy=False)
    elif isinstance(value, (list, tuple)):
        # The common case at C speed; the walk below names the first bad value.
        if not set(map(type, value)) <= {int}:
            for i, v in enumerate(value):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise RequestError(
                        f"`{field}[{i}]` must be an integer, got "
                        f"{type(v).__name__} {v!r}",
                        field,
                    )
        try:
            values = np.array(value, dtype=np.int64)
        except OverflowError:
            i, v = next(
                (i, v) for i, v in enumerate(value) if not INT64_MIN <= v <= INT64_MAX
            )
            raise RequestError(
                f"`{field}` must be a list of integers: `{field}[{i}]` = {v} does "
                "not fit a 64-bit integer",
                field,
            ) from None
    else:
        raise RequestError(
            f"`{field}` must be a list of integers or a typed array", field
        )
    if values.size and not low <= values.min() <= values.max() <= high:
        i = int(np.flatnonzero((values < low) | (values > high))[0])
        raise RequestError(
            f"`{field}[{i}]` = {int(values[i])} is outside [{low}, {high}]", field
        )
    return values


def floats(field: str, value: object, rows: int, width: int) -> np.ndarray:
    """`[rows, width]` finite float32 values of magnitude at most
    `MAX_FEATURE_MAGNITUDE`, from a list of rows or a typed array."""
    if is_array(value):
        array = _typed(field, value, FLOAT_DTYPES, "f")
        _check_shape(field, array, (rows, width))
        values = array.astype(np.float32, copy=False)
    else:
        values = _float_rows(field, value, rows, width)
    bad = ~(np.abs(values) <= MAX_FEATURE_MAGNITUDE)  # NaN compares False
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise RequestError(
            f"`{field}[{row}]` holds {values[row][bad[row]][0]}: features must be "
            f"finite, of magnitude at most {MAX_FEATURE_MAGNITUDE}",
            field,
        )
    return values


def _float_rows(field: str, data: object, rows: int, width: int) -> np.ndarray:
    if not isinstance(data, (list, tuple)) or len(data) != rows:
        raise RequestError(
            f"`{field}` must hold one list of {width} numbers per row ({rows}), "
            "or be a typed array",
            field,
        )
    # Type and length checks at C speed; a row-by-row walk only to name the
    # first bad row.
    if (
        set(map(type, data)) <= {list, tuple}
        and set(map(len, data)) <= {width}
        and set(map(type, chain.from_iterable(data))) <= {int, float}
    ):
        try:
            values = np.fromiter(chain.from_iterable(data), np.float32, rows * width)
        except OverflowError:  # an integer beyond any float
            row = next(
                i
                for i, values in enumerate(data)
                if any(type(v) is int and abs(v) > 2**128 for v in values)
            )
            raise RequestError(
                f"`{field}[{row}]` holds an integer beyond any float: features "
                f"must be finite, of magnitude at most {MAX_FEATURE_MAGNITUDE}",
                field,
            ) from None
        return values.reshape(rows, width)
    for i, row in enumerate(data):
        if not isinstance(row, (list, tuple)) or len(row) != width:
            raise RequestError(f"`{field}[{i}]` must be {width} numbers", field)
        if any(
            isinstance(v, bool) or not isinstance(v, (int, float, np.floating))
            for v in row
        ):
            raise RequestError(f"`{field}[{i}]` must be numbers", field)
    return np.array(data, dtype=np.float32)  # number subclasses (NumPy floats)


def encode_array(array: np.ndarray | torch.Tensor) -> dict[str, object]:
    """The HTTP form of an array (for clients: `rank.py`, benchmarks, tests)."""
    if isinstance(array, torch.Tensor):
        if array.dtype == torch.bfloat16:
            bits = array.contiguous().view(torch.int16).numpy().view("<u2")
            return {
                "dtype": "bfloat16",
                "shape": list(array.shape),
                "data": base64.b64encode(bits.tobytes()).decode(),
            }
        array = array.numpy()
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(little.tobytes()).decode(),
    }


def decode_array(value: Mapping[str, object]) -> np.ndarray:
    """An array from its HTTP form (for clients: binary scores, tests)."""
    return _from_binary("array", value, {**INTEGER_DTYPES, **FLOAT_DTYPES})
