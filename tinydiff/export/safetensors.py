"""The ``.safetensors`` format, read and written with NumPy alone.

A file is three parts (the format as huggingface/safetensors specifies it):

    8 bytes    N, the length of the header: an unsigned 64-bit little-endian integer
    N bytes    the header, UTF-8 JSON, padded with spaces:
                   {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...,
                    "__metadata__": {"any": "strings"}}            (the metadata is optional)
    the rest   the byte buffer: each tensor's raw little-endian bytes in C order, at
               [begin, end) of this buffer (offsets count from the buffer's start, not the file's)

There is nothing to execute in such a file, which is why it is the weights format the
PyTorch ecosystem moved to. The reader trusts nothing: every fault of a header is a
``SafetensorsError`` (a ValueError) naming it, never another exception and never a silent
partial read. The checks, in order:

    the file holds the 8 length bytes; N <= MAX_HEADER_BYTES and the header fits in the file
    the header is UTF-8 JSON of one object, with no key twice
    "__metadata__", if present, maps strings to strings
    every tensor is {"dtype", "shape", "data_offsets"} and nothing else, with a known dtype,
        a shape of non-negative integers and 0 <= begin <= end <= the buffer's length
    end - begin = (product of the shape) * (the dtype's size)
    the tensors tile the buffer: sorted by offset, each starts where the last ended (no
        overlap, no gap), the first at 0 and the last at the buffer's end (no trailing bytes)
    BOOL bytes are 0 or 1

dtypes NumPy has no type for (BF16, F8_*) are refused by name.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

# safetensors dtype name -> NumPy dtype, little-endian as the format stores them
DTYPES = {"BOOL": np.dtype("?"), "U8": np.dtype("u1"), "I8": np.dtype("i1"), "U16": np.dtype("<u2"),
          "I16": np.dtype("<i2"), "F16": np.dtype("<f2"), "U32": np.dtype("<u4"), "I32": np.dtype("<i4"),
          "F32": np.dtype("<f4"), "U64": np.dtype("<u8"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8")}
NO_NUMPY_TYPE = ("BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64")
MAX_HEADER_BYTES = 100_000_000          # the reference implementation's limit
METADATA = "__metadata__"


class SafetensorsError(ValueError):
    """A ``.safetensors`` file (or its bytes) that breaks the format; the message names the fault.

    >>> issubclass(td.export.SafetensorsError, ValueError)
    True
    """


def dtype_name(dtype) -> str:
    """The safetensors name of a NumPy dtype: float32 -> "F32", int64 -> "I64", bool -> "BOOL".

    >>> td.export.safetensors.dtype_name(np.float64)
    'F64'
    """
    dtype = np.dtype(dtype)
    for name, known in DTYPES.items():
        if dtype.kind == known.kind and dtype.itemsize == known.itemsize:
            return name
    raise TypeError(f"dtype {dtype} has no safetensors equivalent; expected one of bool, uint8/16/32/64, "
                    "int8/16/32/64, float16/32/64")


# ---------------------------------------------------------------------- writing
def encode_safetensors(arrays: dict, metadata: dict | None = None) -> bytes:
    """The bytes of a ``.safetensors`` file holding ``arrays`` (dict str -> ndarray) and the
    optional string-to-string ``metadata``. Tensors are laid out in sorted name order; the
    header is padded with spaces to a multiple of 8 bytes, so every tensor starts aligned.

    >>> data = td.export.encode_safetensors({"w": np.ones((2, 3), np.float32)})
    >>> int.from_bytes(data[:8], "little") % 8, len(data) - 8 - int.from_bytes(data[:8], "little")
    (0, 24)
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of str -> ndarray, got {type(arrays).__name__}")
    header, chunks, offset = {}, [], 0
    if metadata:
        if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in metadata.items()):
            raise TypeError(f"metadata must be a dict of str -> str, got {metadata!r:.200}")
        header[METADATA] = dict(metadata)
    for name in sorted(arrays):
        if not isinstance(name, str) or not name or name == METADATA:
            raise ValueError(f"array names must be non-empty strings other than {METADATA!r}, got {name!r}")
        arr = np.asarray(arrays[name])
        code = dtype_name(arr.dtype)
        raw = np.ascontiguousarray(arr, dtype=DTYPES[code]).tobytes()     # little-endian, C order
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def save_safetensors(path, arrays: dict, metadata: dict | None = None) -> None:
    """Write ``arrays`` (dict str -> ndarray) to ``path`` as ``.safetensors``, atomically
    (a crash leaves the old file or the new one). ``metadata``: optional dict str -> str.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "weights.safetensors")
    >>> td.export.save_safetensors(path, {"w": np.arange(6.0).reshape(2, 3), "step": np.array(7)})
    >>> {k: v.tolist() for k, v in td.export.load_safetensors(path).items()}
    {'step': 7, 'w': [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]}
    """
    from ..checkpoint import atomic_write         # the library's crash-safe write (numpy only)
    data = encode_safetensors(arrays, metadata)
    with atomic_write(path) as f:
        f.write(data)


# ---------------------------------------------------------------------- reading
def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise SafetensorsError(f"header: key {next(k for k in keys if keys.count(k) > 1)!r} appears twice")
    return dict(pairs)


def _refuse_constant(name):
    raise SafetensorsError(f"header: {name} is not a JSON number")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_header(data: bytes, where: str):
    """(header dict, byte buffer) of a file's bytes, after the length and JSON checks."""
    if len(data) < 8:
        raise SafetensorsError(f"{where}: {len(data)} bytes, too short for the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{where}: header length {n:,} bytes exceeds the limit of {MAX_HEADER_BYTES:,}")
    if n > len(data) - 8:
        raise SafetensorsError(f"{where}: header length {n:,} bytes runs past the end of the file "
                               f"({len(data) - 8:,} bytes follow the length)")
    try:
        text = bytes(data[8:8 + n]).decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except SafetensorsError as err:
        raise SafetensorsError(f"{where}: {err}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:   # JSONDecodeError is a ValueError
        raise SafetensorsError(f"{where}: the header is not UTF-8 JSON ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{where}: the header is a JSON {type(header).__name__}, expected an object "
                               "{name: {dtype, shape, data_offsets}}")
    return header, memoryview(data)[8 + n:]


def _check_entry(name, entry, buffer_size: int, where: str):
    """(dtype, shape, begin, end) of one tensor's header entry, or a SafetensorsError naming it."""
    what = f"{where}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise SafetensorsError(f"{what}: expected exactly the keys ['data_offsets', 'dtype', 'shape'], got {keys}")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code in NO_NUMPY_TYPE:
        raise SafetensorsError(f"{what}: dtype {code} has no NumPy type; convert it (e.g. to F32) before saving")
    if not isinstance(code, str) or code not in DTYPES:
        raise SafetensorsError(f"{what}: unknown dtype {code!r}, expected one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise SafetensorsError(f"{what}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise SafetensorsError(f"{what}: data_offsets {offsets!r} is not a pair of integers [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= buffer_size:
        raise SafetensorsError(f"{what}: data_offsets [{begin}, {end}] out of range: expected "
                               f"0 <= begin <= end <= {buffer_size}, the byte buffer's length")
    dtype = DTYPES[code]
    size = math.prod(shape) * dtype.itemsize
    if end - begin != size:
        raise SafetensorsError(f"{what}: holds {end - begin} bytes but dtype {code} and shape {shape} "
                               f"need {size}")
    return dtype, tuple(shape), begin, end


def decode_safetensors(data, where: str = "safetensors data"):
    """Parse the bytes of a ``.safetensors`` file: returns ``(arrays, metadata)``, arrays in
    native byte order (copies, not views of ``data``), metadata a dict str -> str ({} if none).
    Any fault is a SafetensorsError (see the module docstring for the checks).

    >>> data = td.export.encode_safetensors({"b": np.zeros(2, np.int64)}, {"note": "hi"})
    >>> arrays, metadata = td.export.decode_safetensors(data)
    >>> arrays["b"].dtype, metadata
    (dtype('int64'), {'note': 'hi'})
    >>> td.export.decode_safetensors(data + b"junk")
    Traceback (most recent call last):
    ...
    tinydiff.export.safetensors.SafetensorsError: safetensors data: 4 trailing bytes after the last tensor ...
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    header, buffer = _read_header(data, where)
    metadata = header.pop(METADATA, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{where}: {METADATA} must map strings to strings, got {metadata!r:.200}")
    entries = {name: _check_entry(name, entry, len(buffer), where) for name, entry in header.items()}
    position = 0                                  # the tensors must tile the buffer exactly
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin < position:
            raise SafetensorsError(f"{where}: tensor {name!r} at [{begin}, {end}] overlaps the tensor "
                                   f"before it, which ends at {position}")
        if begin > position:
            raise SafetensorsError(f"{where}: {begin - position} unused bytes at [{position}, {begin}] "
                                   f"before tensor {name!r}")
        position = end
    if position != len(buffer):
        raise SafetensorsError(f"{where}: {len(buffer) - position} trailing bytes after the last tensor "
                               f"(it ends at {position}, the buffer at {len(buffer)})")
    arrays = {}
    for name, (dtype, shape, begin, end) in entries.items():
        raw = np.frombuffer(buffer[begin:end], dtype=np.uint8)
        if dtype.kind == "b" and raw.size and raw.max() > 1:
            raise SafetensorsError(f"{where}: tensor {name!r} is BOOL but holds byte value {int(raw.max())}, "
                                   "expected 0 or 1")
        arrays[name] = raw.view(dtype).reshape(shape).astype(dtype.newbyteorder("="))   # a native copy
    return arrays, metadata


def load_safetensors(path) -> dict:
    """Read a ``.safetensors`` file: {name: ndarray} (native byte order). Its metadata, if
    any, is ``load_safetensors_metadata(path)``. Raises FileNotFoundError for a missing file
    and SafetensorsError (a ValueError) for any fault of the format.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "bad.safetensors")
    >>> _ = open(path, "wb").write((10**12).to_bytes(8, "little") + b"{}")
    >>> td.export.load_safetensors(path)
    Traceback (most recent call last):
    ...
    tinydiff.export.safetensors.SafetensorsError: ...bad.safetensors: header length 1,000,000,000,000 bytes exceeds ...
    """
    return decode_safetensors(_read_file(path), os.fspath(path))[0]


def load_safetensors_metadata(path) -> dict:
    """The ``__metadata__`` of a ``.safetensors`` file (dict str -> str; {} if it has none),
    after the same checks as ``load_safetensors``.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> td.export.save_safetensors(path, {"w": np.zeros(2)}, {"step": "10"})
    >>> td.export.load_safetensors_metadata(path)
    {'step': '10'}
    """
    return decode_safetensors(_read_file(path), os.fspath(path))[1]


def _read_file(path) -> bytes:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file {path!r} does not exist")
    with open(path, "rb") as f:
        return f.read()


__all__ = ["SafetensorsError", "encode_safetensors", "decode_safetensors", "save_safetensors", "load_safetensors",
           "load_safetensors_metadata", "dtype_name", "DTYPES"]
