"""Checks a model directory's safetensors files before vLLM reads them.

A truncated, empty or corrupt file otherwise fails inside vLLM's weight
iterator with a safetensors message that names no file. The header is the
whole file format's structure (an 8-byte little-endian length, a JSON table of
dtype, shape and byte range per tensor), so checking it and the file size
catches those cases without reading any tensor data.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

# safetensors itself refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


class WeightFileError(ValueError):
    """A weight file that cannot be read; the message names the file."""


def check_weight_files(model_dir: str | Path) -> None:
    """Check every `*.safetensors` header in a local model directory.

    A model named by a hub id (no such directory) is left to vLLM.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.safetensors")):
        check_safetensors_header(path)


def check_safetensors_header(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise WeightFileError(f"{path}: {size} bytes, too short for safetensors")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise WeightFileError(
                f"{path}: header length {length} does not fit the file "
                f"({size} bytes): truncated or not safetensors"
            )
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WeightFileError(f"{path}: header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: header is not a table of tensors")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        _check_entry(path, name, entry, data_bytes)


def _check_entry(path: Path, name: str, entry: object, data_bytes: int) -> None:
    try:
        dtype, shape, (begin, end) = (
            entry["dtype"], entry["shape"], entry["data_offsets"]  # type: ignore[index]
        )  # fmt: skip
        count = math.prod(int(n) for n in shape)
    except (TypeError, KeyError, ValueError):
        raise WeightFileError(
            f"{path}: tensor `{name}` has a malformed entry"
        ) from None
    if not 0 <= begin <= end <= data_bytes:
        raise WeightFileError(
            f"{path}: tensor `{name}` spans bytes {begin}..{end} of {data_bytes}: "
            "the file is truncated"
        )
    # A dtype not listed here (safetensors adds some) is left to safetensors.
    if dtype in DTYPE_BYTES and end - begin != count * DTYPE_BYTES[dtype]:
        raise WeightFileError(
            f"{path}: tensor `{name}` of shape {shape} ({dtype}) holds "
            f"{end - begin} bytes, expected {count * DTYPE_BYTES[dtype]}"
        )
