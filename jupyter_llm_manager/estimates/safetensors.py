"""Safetensors headers, read for an estimate: regular files only, every tensor checked, work linear in the header.

A safetensors file is an 8-byte little-endian length, a JSON header of that
length (tensor name → ``dtype``, ``shape``, ``data_offsets``), then the data.
A header is a user's file like any other: it may claim a tensor of 300,000
dimensions (multiplying them is quadratic in Python), a negative size (an
estimate of −256 TB), or be a FIFO. So a tensor is believed only when its
shape is a short list of whole numbers whose product fits in the file, and
its data offsets are inside the file and hold exactly that many values; the
whole check costs a few steps per tensor, so reading a header costs time in
proportion to its size. Anything else is a one-line ``ValueError``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..support.regular_files import load_json, open_regular

__all__ = ["DTYPE_BYTES", "MAX_DIMENSIONS", "checkpoint_shapes", "read_safetensors_header", "shard_files",
           "tensor_bytes", "tensors_from_header"]

#: Bytes per value of each safetensors dtype (sub-byte floats as fractions).
DTYPE_BYTES: dict[str, Fraction] = {
    **{name: Fraction(8) for name in ("F64", "I64", "U64")}, **{name: Fraction(4) for name in ("F32", "I32", "U32")},
    **{name: Fraction(2) for name in ("F16", "BF16", "I16", "U16")},
    **{name: Fraction(1) for name in ("F8_E4M3", "F8_E5M2", "F8_E8M0", "I8", "U8", "BOOL")},
    "F4": Fraction(1, 2), "F6_E2M3": Fraction(3, 4), "F6_E3M2": Fraction(3, 4),
}
#: The most dimensions a tensor may have (NumPy's own limit is 64; models use 1 to 5).
MAX_DIMENSIONS = 64
_MAX_HEADER = 100 * 1024 * 1024
_MAX_INDEX = 16 * 1024 * 1024  # a shard index lists each tensor once: a few MB for the largest models
_MAX_NAME = 4096


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name → dtype, shape, offsets, each checked.

    Raises ``ValueError`` (one line) for a file that is not a valid
    safetensors file, ``OSError`` for one that cannot be read or is not a
    regular file (a FIFO is refused at once, never waited on).
    """
    path = Path(path)
    descriptor = open_regular(path)
    try:
        size = os.fstat(descriptor).st_size
        prefix = os.pread(descriptor, 8, 0)
        if len(prefix) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path} has a corrupted safetensors header (length {length:,})")
        raw = _read_at(descriptor, length, 8)
    finally:
        os.close(descriptor)
    header = _parse(raw, path)
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    for name, info in header.items():
        _check_tensor(path, name, info, data_size)
    return header


def _read_at(descriptor: int, length: int, offset: int) -> bytes:
    chunks, done = [], 0
    while done < length:
        chunk = os.pread(descriptor, min(length - done, 1 << 24), offset + done)
        if not chunk:
            raise ValueError("the file became shorter while it was read")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _parse(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{path} has a corrupted safetensors header: its JSON nests too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} has a corrupted safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupted safetensors header: not a JSON object")
    return header


def _check_tensor(path: Path, name: str, info: Any, data_size: int) -> None:
    """``ValueError`` unless ``info`` describes a tensor that the file's data really holds."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path} has a corrupted safetensors header: tensor {name[:80]!r} {why}")

    if len(name) > _MAX_NAME:
        raise bad(f"has a name of {len(name):,} characters")
    if not isinstance(info, dict):
        raise bad("is not described by a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad(f"has the dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMENSIONS:
        raise bad(f"has no shape of at most {MAX_DIMENSIONS} dimensions")
    count = 1
    for dimension in shape:
        if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension < 0:
            raise bad(f"has the dimension {str(dimension)[:40]!r}: a size is a whole number, at least 0")
        count *= dimension
        if count > 8 * data_size:  # more values than the file has bits: stop before the number grows further
            raise bad(f"claims more values than the file holds ({data_size:,} bytes of data)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool)
                                                                     for o in offsets)):
        raise bad("has no data offsets [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise bad(f"has its data at {begin:,}..{end:,}, outside the file's {data_size:,} bytes of data")
    element = DTYPE_BYTES.get(dtype)
    if element is not None and count * element != end - begin:
        raise bad(f"says {count:,} values of {dtype} but holds {end - begin:,} bytes")


def tensors_from_header(header: Mapping[str, Any]) -> Iterable[tuple[str, str, int]]:
    """``(name, dtype, values)`` of each tensor of a header :func:`read_safetensors_header` checked."""
    for name, info in header.items():
        count = 1
        for dimension in info["shape"]:
            count *= dimension
        yield name, info["dtype"], count


def tensor_bytes(header: Mapping[str, Any]) -> int:
    """The bytes of a checked header's tensors (unknown dtypes counted at 4 bytes a value)."""
    return sum(int(DTYPE_BYTES.get(dtype, Fraction(4)) * count) for _, dtype, count in tensors_from_header(header))


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors headers of a checkpoint folder (nothing is loaded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for name, info in read_safetensors_header(path).items():
            shapes[name] = tuple(info["shape"])
    return shapes


def shard_files(folder: Path) -> list[str]:
    """The files a sharded checkpoint's ``model.safetensors.index.json`` names (each a file of the folder)."""
    index = load_json(folder / "model.safetensors.index.json", _MAX_INDEX)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError("model.safetensors.index.json has no weight_map of tensor names to files")
    files = sorted(set(weight_map.values()))
    if any(Path(name).name != name or name in ("", ".", "..") for name in files):
        raise ValueError("model.safetensors.index.json names a file outside the checkpoint's folder")
    return files
