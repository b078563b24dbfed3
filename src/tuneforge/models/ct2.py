"""Reader of CTranslate2's `model.bin`: name → numpy array, plus the alias table. Pure parsing; no pickle, no exec.

Layout (little-endian; written by CTranslate2's python/ctranslate2/specs/model_spec.py `_serialize`, read by
src/models/model.cc `Model::load`):

    u32 binary_version                      (this reader accepts 1..6)
    str spec_name, u32 spec_revision        (binary_version >= 2)
    u32 num_variables, then per variable:
        str name, u8 rank, u32 dims[rank],
        u8 dtype_id, u32 num_bytes          (binary_version >= 4; dtype ids below)
        u8 item_size, u32 num_items         (binary_version < 4: 4 → float32, 2 → int16, 1 → int8)
        bytes data[num_bytes]
    u32 num_aliases, then (str alias, str target) pairs   (binary_version >= 3)

where `str` is a u16 length (counting a trailing NUL) followed by that many bytes. Arrays keep the stored dtype
(bfloat16 comes back as `ml_dtypes.bfloat16` when that package is present, else as raw uint16 bits). Any truncated,
over-long or unknown file raises one-line `ModelError`."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneforge.errors import ModelError

MAX_BINARY_VERSION = 6
# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
DTYPE_IDS = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
OLD_ITEM_SIZES = {4: "float32", 2: "int16", 1: "int8"}


@dataclass
class CT2Model:
    binary_version: int
    spec: str  # e.g. "WhisperSpec"; "" for binary version 1
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)  # alias → name of a stored variable

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following an alias."""
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: str) -> bool:
        return name in self.variables or name in self.aliases


def numpy_dtype(name: str) -> np.dtype:
    if name != "bfloat16":
        return np.dtype(name).newbyteorder("<")
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:  # keep the bits; the caller widens them (see `to_float32`)
        return np.dtype("<u2")


def to_float32(array: np.ndarray) -> np.ndarray:
    """A float array from `read_model_bin` as float32. uint16 only ever holds raw bfloat16 bits (see
    `numpy_dtype`); they are widened by putting them in the high half of a float32."""
    if array.dtype == np.dtype("<u2"):
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


class _Cursor:
    """Reads little-endian fields from a bytes buffer; running off its end is a ModelError naming the file."""

    def __init__(self, data: memoryview, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelError(f"CTranslate2 file '{self.path}' is truncated: {what} needs {n} bytes at offset "
                             f"{self.pos} but the file has {len(self.data)}; re-copy or reinstall it")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def u8(self, what: str) -> int:
        return self.unpack("B", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", what)[0]
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise ModelError(f"CTranslate2 file '{self.path}': {what} at offset {self.pos - n} is not a "
                             f"NUL-terminated string; the file is corrupt or not a CTranslate2 model.bin")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"CTranslate2 file '{self.path}': {what} is not UTF-8; the file is corrupt") from None


def _read_variable(cur: _Cursor, version: int, index: int) -> tuple[str, np.ndarray]:
    name = cur.string(f"name of variable {index}")
    shape = cur.unpack(f"{cur.u8(f'rank of {name}')}I", f"shape of {name}")
    if version >= 4:
        type_id = cur.u8(f"dtype of {name}")
        dtype = DTYPE_IDS.get(type_id)
        num_bytes = cur.u32(f"size of {name}")
    else:
        type_id = cur.u8(f"item size of {name}")
        dtype = OLD_ITEM_SIZES.get(type_id)
        num_bytes = cur.u32(f"size of {name}") * type_id
    if dtype is None:
        raise ModelError(f"CTranslate2 file '{cur.path}': variable '{name}' has unknown dtype id {type_id}; "
                         f"the file is corrupt or from a newer CTranslate2")
    np_dtype = numpy_dtype(dtype)
    if num_bytes != int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize:
        raise ModelError(f"CTranslate2 file '{cur.path}': variable '{name}' has {num_bytes} bytes, which does not "
                         f"fit shape {list(shape)} of {dtype}; the file is corrupt")
    data = cur.take(num_bytes, f"data of {name}")
    return name, np.frombuffer(data, dtype=np_dtype).reshape(shape).copy()


def parse_model_bin(data: bytes | memoryview, path: Path | str = "model.bin") -> CT2Model:
    cur = _Cursor(memoryview(data), Path(path))
    version = cur.u32("binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise ModelError(f"'{path}' has CTranslate2 binary version {version}; this reader knows 1 to "
                         f"{MAX_BINARY_VERSION} (not a CTranslate2 model.bin, or one from a newer release)")
    spec, revision = (cur.string("spec name"), cur.u32("spec revision")) if version >= 2 else ("", 1)
    variables = dict(_read_variable(cur, version, i) for i in range(cur.u32("variable count")))
    aliases = {}
    if version >= 3:
        for i in range(cur.u32("alias count")):
            alias = cur.string(f"alias {i}")
            aliases[alias] = cur.string(f"target of alias {alias}")
    if cur.pos != len(cur.data):
        raise ModelError(f"'{path}' has {len(cur.data) - cur.pos} bytes after its last record; the file is "
                         f"corrupt or two files were joined")
    missing = sorted(a for a, target in aliases.items() if target not in variables)
    if missing:
        raise ModelError(f"'{path}': alias '{missing[0]}' points to a variable that is not in the file")
    return CT2Model(version, spec, revision, variables, aliases)


def read_model_bin(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 model.bin file (see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read CTranslate2 file '{path}': {e.strerror or e}") from None
    return parse_model_bin(data, path)
