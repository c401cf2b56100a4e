"""The GGUF header, read for an estimate: bounded work, every count checked, nothing else kept.

A GGUF file (v2/v3, little-endian) is: ``GGUF``, a version, a tensor count
and a key count (u64 each); typed key/value pairs (a key is a u64-length
string; a value is one of 12 fixed-size types, a string, or an array of any
of them, arrays included); each tensor's name, dimensions, ggml type and
offset; then the tensor data, aligned to ``general.alignment`` (32 bytes
unless set). :func:`read_header` walks it once, forward, in chunks.

It keeps only the fields an estimate uses, and the sampling settings the
file recommends (``general.sampling.*``), and skips the rest by its length.
Every count, length and offset is checked against what is left of the file
before it is used, and the number of entries walked and bytes read are
capped, so the cost depends on the header, never on a count it claims.
Whatever is wrong is a :class:`NotGguf` saying what, in one short line.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..support import regular_files

__all__ = ["MAGIC", "NOT_REGULAR", "HeaderFacts", "NotGguf", "block_size", "open_regular", "read_header", "row_bytes"]

#: The first four bytes of every GGUF file.
MAGIC = b"GGUF"
NOT_REGULAR = "it is not a regular file (a FIFO, a device or a folder): give the path of a .gguf file"
_VERSIONS = (2, 3)  # version 1 used 32-bit counts; llama.cpp dropped it


class NotGguf(Exception):
    """Why a file is not a GGUF file this reader accepts: one line, quoting the file only in excerpts."""


@dataclass(frozen=True)
class HeaderFacts:
    """What an estimate needs from a header; a field the file does not set is ``None``."""

    architecture: str | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    embedding_length: int | None
    context_length: int | None
    vocab_size: int | None
    tokens: int  # the length of ``tokenizer.ggml.tokens``, its elements unread
    tensor_bytes: int
    parameters: int
    sampling: tuple[tuple[str, float], ...] = ()  # ``general.sampling.*`` numbers: the file's recommended settings
    kind: str | None = None  # ``general.type``: ``model`` or ``adapter`` (a LoRA file)
    adapter_type: str | None = None  # ``adapter.type``: ``lora`` for a LoRA adapter
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # each tensor's name and dimensions, when asked for
    weights_type: str | None = None  # the ggml type holding most of the tensors' bytes (``q4_1``): the file's quantization


def read_header(descriptor: int, size: int, *, shapes: bool = False) -> HeaderFacts:
    """The facts of the GGUF file open as ``descriptor`` (``size`` bytes long), or :class:`NotGguf`.

    ``shapes``: keep every tensor's name and dimensions too (to check a LoRA adapter against its base).
    """
    header = _Header(_Cursor(descriptor, size), shapes=shapes)
    header.read()
    return header.facts()


def open_regular(path: Path | str) -> int:
    """A descriptor of ``path`` opened for reading, checked to be a regular file once open.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open; the check after it
    closes the gap between a ``stat`` and the open.
    """
    try:
        return regular_files.open_regular(path)
    except regular_files.NotRegularFile:
        raise NotGguf(NOT_REGULAR) from None


_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_STRING, _ARRAY = 8, 9
#: GGUF value types of a fixed size, as struct formats.
_SCALARS = {t: struct.Struct("<" + f) for t, f in
            {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}.items()}
_NUMBERS = {0, 1, 2, 3, 4, 5, 6, 10, 11, 12}  # every fixed-size type but bool
_INTEGERS = _NUMBERS - {6, 12}
#: ggml tensor types: (values per block, bytes per block). Others are looked up in the ``gguf`` package.
_GGML_TYPES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
               10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
               16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
               22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
               29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17)}
#: The fields an estimate uses (after ``ARCHITECTURE.``), and the largest value that is not absurd.
_FIELDS = {"block_count": 2**16, "attention.head_count": 2**16, "attention.head_count_kv": 2**16,
           "attention.key_length": 2**16, "embedding_length": 2**24, "context_length": 2**30,
           "vocab_size": 2**24}
_TOKENS = "tokenizer.ggml.tokens"
#: The recommended sampling settings a file may carry (llama.cpp's converter writes them), after the prefix.
_SAMPLING_PREFIX = "general.sampling."
_SAMPLING = frozenset({"temp", "top_k", "top_p", "min_p", "penalty_repeat", "penalty_last_n"})
_MAX_VOCAB = 2**24
_MAX_KEYS = 2**16  # a model has a few dozen
_MAX_KEY_BYTES = 2**16
_MAX_ARCHITECTURE = 64
_KEPT_TEXTS = ("general.type", "adapter.type")  # short names kept as they are
_MAX_TENSOR_NAME = 1024  # llama.cpp's own limit is 64
_MAX_ITEMS = 4_000_000  # keys, string and array elements walked, tensors: about a second at worst
_MAX_READ = 64 * 2**20  # header bytes read (a large vocabulary and its merges are a few MB)
_MAX_DEPTH = 8  # arrays of arrays
_MAX_PER_LAYER = 2**16  # per-layer head counts, read to find the largest
_MAX_DIMS = 4
_CHUNK = 256 * 2**10


class _Cursor:
    """Reads a file forward in chunks; every read and skip is checked against the file's size and the budgets."""

    def __init__(self, descriptor: int, size: int) -> None:
        self._descriptor, self.size = descriptor, size
        self.position = 0
        self._buffer, self._start = b"", 0
        self._read = 0
        self._items = 0

    @property
    def left(self) -> int:
        return self.size - self.position

    def count(self, items: int, smallest: int, what: str) -> None:
        """Charge ``items`` elements of at least ``smallest`` bytes each, before walking them."""
        if items * smallest > self.left:
            raise NotGguf(f"{what} claims {items:,} elements but only {self.left:,} bytes are left in the file")
        self._items += items
        if self._items > _MAX_ITEMS:
            raise NotGguf(f"its header has more than {_MAX_ITEMS:,} entries ({what}): no model has that many")

    def window(self, length: int) -> tuple[bytes, int]:
        """The buffer and the offset in it of the next ``length`` bytes (read from the file when needed)."""
        if length > self.left:
            raise NotGguf(f"it ends at byte {self.size:,}, inside its header (it needs {length:,} bytes at "
                           f"byte {self.position:,})")
        offset = self.position - self._start
        if offset < 0 or offset + length > len(self._buffer):
            self._fill(length)
            offset = 0
        return self._buffer, offset

    def _fill(self, length: int) -> None:
        wanted = min(max(length, _CHUNK), self.left)
        self._read += wanted
        if self._read > _MAX_READ:
            raise NotGguf(f"its header is larger than {_MAX_READ // 2**20} MiB: no model's is")
        data = os.pread(self._descriptor, wanted, self.position) if hasattr(os, "pread") else self._seek_read(wanted)
        if len(data) < length:
            raise NotGguf("it became shorter while it was read")
        self._buffer, self._start = data, self.position

    def _seek_read(self, wanted: int) -> bytes:
        os.lseek(self._descriptor, self.position, os.SEEK_SET)
        return os.read(self._descriptor, wanted)

    def unpack(self, layout: struct.Struct) -> tuple:
        buffer, offset = self.window(layout.size)
        self.position += layout.size
        return layout.unpack_from(buffer, offset)

    def u32(self) -> int:
        return int(self.unpack(_U32)[0])

    def u64(self) -> int:
        return int(self.unpack(_U64)[0])

    def take(self, length: int) -> bytes:
        buffer, offset = self.window(length)
        self.position += length
        return bytes(buffer[offset:offset + length])

    def skip(self, length: int, what: str) -> None:
        if length > self.left:
            raise NotGguf(f"{what} is {length:,} bytes long but only {self.left:,} are left in the file")
        self.position += length

    def skip_strings(self, count: int, what: str) -> None:
        """Walk ``count`` strings by their length prefixes (the hot loop: a vocabulary and its merges).

        The loop has no bounds check of its own: ``unpack_from`` raises when a
        prefix is not whole in the buffer, and only then is the next chunk read.
        """
        self.count(count, _U64.size, what)
        unpack = _U64.unpack_from
        buffer, offset = self.window(0)
        left, done = count, 0
        while left:
            try:
                for done in range(left):  # ``done``: how far it got when a prefix runs off the buffer
                    (length,) = unpack(buffer, offset)
                    offset += 8 + length
                break
            except (struct.error, OverflowError):  # OverflowError: a length took the offset past any index
                left -= done
                self.position = self._start + offset
                buffer, offset = self.window(8)
        self.position = self._start + offset
        if self.position > self.size:
            raise NotGguf(f"{what} reaches past the end of the file")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotGguf(f"{what} {_shown(raw)} is not valid UTF-8") from None


def _shown(value: bytes | str, limit: int = 60) -> str:
    """A short, one-line quotation of text from the file: never the whole of a huge value."""
    return repr(value[:limit]) + (f"… ({len(value):,} long)" if len(value) > limit else "")


class _Header:
    """The walk over one file's header: what it keeps, and the checks on the way."""

    def __init__(self, cursor: _Cursor, *, shapes: bool = False) -> None:
        self.cursor = cursor
        self.architecture: str | None = None
        self.texts: dict[str, str] = {}  # the kept short texts (_KEPT_TEXTS)
        self.shapes: list[tuple[str, tuple[int, ...]]] | None = [] if shapes else None
        self.numbers: dict[str, float] = {}  # the wanted fields, for any architecture until it is known
        self.tokens = 0
        self.sampling: dict[str, float] = {}
        self.alignment = 32
        self.tensor_bytes = self.parameters = self.data_end = 0
        self.type_bytes: dict[int, int] = {}  # ggml type -> the tensors' bytes in it

    def read(self) -> None:
        cursor = self.cursor
        magic = cursor.take(4) if cursor.size >= 4 else b""
        if magic != MAGIC:
            raise NotGguf(f"it does not start with GGUF (it starts with {_shown(magic)})")
        version = cursor.u32()
        if version not in _VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            raise NotGguf("it is a big-endian file, which llama.cpp cannot run here" if swapped in _VERSIONS else
                           f"its GGUF version is {version}, not 2 or 3: convert it again with a recent llama.cpp")
        tensors, keys = cursor.u64(), cursor.u64()
        if keys > _MAX_KEYS:
            raise NotGguf(f"it claims {keys:,} metadata keys: no model has more than a few hundred")
        cursor.count(keys, 13, "its metadata")  # a key's length, a type and at least one byte
        seen: set[bytes] = set()
        for _ in range(keys):
            self._pair(seen)
        cursor.count(tensors, 24, "its tensor list")  # a name's length, dimensions, a type and an offset
        for _ in range(tensors):
            self._tensor()
        data_start = -(-cursor.position // self.alignment) * self.alignment
        if data_start + self.data_end > cursor.size:
            raise NotGguf(f"its tensors need {data_start + self.data_end:,} bytes but the file has "
                           f"{cursor.size:,}")

    def facts(self) -> HeaderFacts:
        """The fields of the file's own architecture, each checked to be a count an estimate can use."""
        prefix = f"{self.architecture or 'llama'}."
        fields = {field: _count(prefix + field, self.numbers[prefix + field], limit)
                  for field, limit in _FIELDS.items() if prefix + field in self.numbers}
        if self.tokens > _MAX_VOCAB:
            raise NotGguf(f"{_TOKENS} claims {self.tokens:,} tokens: no vocabulary is that large")
        return HeaderFacts(
            self.architecture, fields.get("block_count"), fields.get("attention.head_count"),
            fields.get("attention.head_count_kv"), fields.get("attention.key_length"),
            fields.get("embedding_length"), fields.get("context_length"), fields.get("vocab_size"),
            self.tokens, self.tensor_bytes, self.parameters, tuple(sorted(self.sampling.items())),
            self.texts.get("general.type"), self.texts.get("adapter.type"), tuple(self.shapes or ()),
            type_name(max(self.type_bytes, key=self.type_bytes.__getitem__)) if self.type_bytes else None)

    def _pair(self, seen: set[bytes]) -> None:
        cursor = self.cursor
        length = cursor.u64()
        if length > _MAX_KEY_BYTES:
            raise NotGguf(f"a metadata key is {length:,} bytes long: keys are short names")
        raw = cursor.take(length)
        key = _text(raw, "the metadata key")
        if raw in seen:
            raise NotGguf(f"the metadata key {_shown(key)} appears twice")
        seen.add(raw)
        kind = cursor.u32()
        if kind in _SCALARS:
            if key == "general.alignment" or self._wanted(key):
                self._scalar(key, kind)
            elif _sampling_name(key) and kind in _NUMBERS:
                (self.sampling[_sampling_name(key)],) = cursor.unpack(_SCALARS[kind])
            else:
                cursor.skip(_SCALARS[kind].size, _shown(key))
        elif kind == _STRING:
            self._string(key)
        elif kind == _ARRAY:
            self._array(key, 0)
        else:
            raise NotGguf(f"the metadata key {_shown(key)} has the unknown value type {kind}")

    def _wanted(self, key: str) -> bool:
        prefix, _, field = key.partition(".")
        return field in _FIELDS and self.architecture in (None, prefix)

    def _scalar(self, key: str, kind: int) -> None:
        (value,) = self.cursor.unpack(_SCALARS[kind])
        if kind not in _NUMBERS:
            raise NotGguf(f"{_shown(key)} is a bool, not a number")
        if key == "general.alignment":
            if not (kind in _INTEGERS and 0 < value <= 2**16 and value & (value - 1) == 0):
                raise NotGguf(f"general.alignment is {value!r}, not a power of two")
            self.alignment = int(value)
        else:
            self._keep(key, value)

    def _keep(self, key: str, value: float) -> None:
        """Keep a wanted field; before the architecture is known, only as many as a few models have."""
        if len(self.numbers) >= 4 * len(_FIELDS) and key not in self.numbers:
            raise NotGguf("it has more model fields than a model has, before general.architecture")
        self.numbers[key] = value

    def _string(self, key: str) -> None:
        cursor = self.cursor
        length = cursor.u64()
        if length > cursor.left:
            raise NotGguf(f"the value of {_shown(key)} is {length:,} bytes long but only {cursor.left:,} are "
                           "left in the file")
        if key == "general.architecture" and length > _MAX_ARCHITECTURE:
            raise NotGguf(f"general.architecture is {length:,} bytes long ({_shown(cursor.take(60))}): "
                           "not an architecture's name")
        if key in _KEPT_TEXTS and length > _MAX_ARCHITECTURE:
            raise NotGguf(f"{key} is {length:,} bytes long: it names a kind of file in a word")
        value = _text(cursor.take(length), f"the value of {_shown(key)}")
        if key in _KEPT_TEXTS:
            self.texts[key] = value
        if key == "general.architecture":
            if not value.isprintable() or not value.strip():
                raise NotGguf(f"general.architecture is {_shown(value)}: not an architecture's name")
            self.architecture = value
            self.numbers = {k: v for k, v in self.numbers.items() if k.startswith(value + ".")}
        elif self._wanted(key):
            raise NotGguf(f"{_shown(key)} is a text, not a number")

    def _array(self, key: str, depth: int) -> None:
        cursor = self.cursor
        kind, count = cursor.u32(), cursor.u64()
        what = f"the array {_shown(key)}"
        if depth == 0 and key == _TOKENS:
            self.tokens = count
        if kind in _SCALARS:
            size = _SCALARS[kind].size
            if depth == 0 and self._wanted(key) and kind in _INTEGERS:
                self._per_layer(key, kind, count)
            else:
                cursor.skip(count * size, what)
        elif kind == _STRING:
            cursor.skip_strings(count, what)
        elif kind == _ARRAY:
            if depth + 1 >= _MAX_DEPTH:
                raise NotGguf(f"{what} nests arrays more than {_MAX_DEPTH} deep")
            cursor.count(count, 12, what)  # each: a type and a count
            for _ in range(count):
                self._array(key, depth + 1)
        else:
            raise NotGguf(f"{what} has the unknown element type {kind}")

    def _per_layer(self, key: str, kind: int, count: int) -> None:
        """A count given per layer (some architectures): the largest one stands for all."""
        if count > _MAX_PER_LAYER:
            raise NotGguf(f"{_shown(key)} lists {count:,} values: more than a model has layers")
        self.cursor.count(count, _SCALARS[kind].size, f"the array {_shown(key)}")
        values = self.cursor.unpack(struct.Struct(f"<{count}{_SCALARS[kind].format[1:]}"))
        self._keep(key, max(values, default=0))

    def _tensor(self) -> None:
        cursor = self.cursor
        length, name = cursor.u64(), ""
        if self.shapes is None:
            cursor.skip(length, "a tensor's name")
        elif length > _MAX_TENSOR_NAME:
            raise NotGguf(f"a tensor's name is {length:,} bytes long: names are short")
        else:
            name = _text(cursor.take(length), "a tensor's name")
        dimensions = cursor.u32()
        if dimensions > _MAX_DIMS:
            raise NotGguf(f"a tensor has {dimensions} dimensions (at most {_MAX_DIMS})")
        shape = cursor.unpack(struct.Struct(f"<{dimensions}Q"))
        kind = cursor.u32()
        block, block_bytes = _ggml_type(kind)
        offset = cursor.u64()
        elements = math.prod(shape)
        if shape and shape[0] % block:
            raise NotGguf(f"a tensor's rows ({shape[0]:,} values) are not whole blocks of {block}")
        size = elements // block * block_bytes
        if offset % self.alignment or offset + size > cursor.size:
            raise NotGguf(f"a tensor's data (offset {offset:,}, {size:,} bytes) does not fit in the file")
        self.tensor_bytes += size
        self.type_bytes[kind] = self.type_bytes.get(kind, 0) + size
        self.parameters += elements
        if self.shapes is not None:
            self.shapes.append((name, tuple(shape)))
        self.data_end = max(self.data_end, offset + size)


def _sampling_name(key: str) -> str:
    """``temp`` for ``general.sampling.temp``: a recommended setting this reader keeps; empty for other keys."""
    name = key.removeprefix(_SAMPLING_PREFIX)
    return name if name != key and name in _SAMPLING else ""


def _count(key: str, value: float, limit: int) -> int:
    """``value`` as a count of things: a whole number from 0 to ``limit`` (NaN, inf, -1 and 2**60 are not)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise NotGguf(f"{_shown(key)} is {value}, not a count")
    if value != int(value) or value < 0:
        raise NotGguf(f"{_shown(key)} is {value!r}: a count is a whole number, at least 0")
    if value > limit:
        raise NotGguf(f"{_shown(key)} is {int(value):,}: more than any model has (at most {limit:,})")
    return int(value)


def _ggml_type(kind: int) -> tuple[int, int]:
    """Values per block and bytes per block of a ggml tensor type (newer types: from the ``gguf`` package)."""
    known = _GGML_TYPES.get(kind)
    if known is not None:
        return known
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise NotGguf(f"a tensor has the unknown type {kind}: a newer llama.cpp format? "
                       "upgrade the gguf package") from None
    return int(block), int(block_bytes)


def type_name(kind: int) -> str:
    """``q4_1`` for 3: the name of a ggml type, as llama.cpp writes it (lower case); its number if unknown."""
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(kind).name.lower()
    except ValueError:
        return str(kind)


def block_size(kind: int) -> int:
    """How many values one block of the ggml type ``kind`` holds (1 for f16 and f32); :class:`NotGguf` if unknown."""
    return _ggml_type(kind)[0]


def row_bytes(kind: int, values: int) -> int:
    """The bytes of ``values`` values of the ggml type ``kind`` (whole blocks), as ggml's ``ggml_row_size``."""
    block, block_bytes = _ggml_type(kind)
    return -(-values // block) * block_bytes
