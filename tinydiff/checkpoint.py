"""Crash-safe checkpoints: one ``.npz`` (or ``.safetensors``) holding the arrays plus JSON metadata.

File layout (format version 1): an ordinary NumPy ``.npz`` archive. Each array is
stored under its own key; the reserved key ``__tinydiff_meta__`` holds a uint8 array
of UTF-8 JSON text ``{"format": "tinydiff-checkpoint", "version": 1, "meta": {...}}``.
Everything is read back with ``np.load(..., allow_pickle=False)``, so a checkpoint can
never execute code, and object arrays are refused both when writing and when reading.

A path ending in ``.safetensors`` is written in that format instead (tinydiff/export/safetensors.py,
NumPy only): the arrays as tensors, the same JSON text under the ``__tinydiff_meta__`` key of the
file's string metadata, so PyTorch and the ``safetensors`` package read the weights, and
``load_checkpoint`` reads it back exactly as it reads an ``.npz``.

Crash safety: ``atomic_write`` writes to a temporary file in the destination folder,
flushes and fsyncs it, then ``os.replace``s it over the target (atomic on POSIX and
Windows). A crash at any moment leaves the old complete file or the new complete one.
An exception inside Python also removes the temporary file; only a hard kill
(SIGKILL, power loss) can leave a stray ``.<name>.*.tmp`` file, which is never read.

Nested training state (model weights, optimizer moments, EMA weights) is flattened
to ``"model/layer1.weight"``-style keys with ``flatten_state`` and rebuilt with
``unflatten_state`` (``split_arrays`` / ``merge_arrays`` separate the arrays from the
scalars that go into the JSON); a Generator's exact state goes into the metadata with
``rng_state_to_json`` and comes back with ``rng_from_json``.
"""
import contextlib
import json
import os
import uuid
import zipfile
import zlib

import numpy as np

from .export.safetensors import SafetensorsError, decode_safetensors, save_safetensors

FORMAT = "tinydiff-checkpoint"
VERSION = 1
META_KEY = "__tinydiff_meta__"


class CheckpointError(ValueError):
    """The file exists but is not a valid tinydiff checkpoint (or lacks a required key).

    >>> issubclass(td.checkpoint.CheckpointError, ValueError)
    True
    """


@contextlib.contextmanager
def atomic_write(path):
    """``with atomic_write(path) as f: f.write(...)`` -- ``path`` appears complete or not at all.

    Yields a binary file object on a temporary file beside ``path``; on normal exit it is
    flushed, fsynced and renamed over ``path``; on an exception it is deleted.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
    >>> with td.checkpoint.atomic_write(path) as f:
    ...     _ = f.write(b"complete or absent")
    >>> open(path).read()
    'complete or absent'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"path {path!r}: folder {folder!r} does not exist")
    # Not tempfile.mkstemp: it creates mode 0600 files; os.open(..., 0o666) honours the umask.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())       # the bytes are on disk before the rename publishes them
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_folder(folder)              # make the rename itself durable


def _fsync_folder(folder):
    if os.name != "posix":             # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj):
    if isinstance(obj, np.generic):    # np.float32 losses, np.int64 steps: store as plain numbers
        return obj.item()
    raise TypeError(f"meta must hold only JSON types (dict, list, str, int, float, bool, None) "
                    f"or NumPy scalars; got a value of type {type(obj).__name__}")


def save_checkpoint(path, arrays, meta=None, compress=False):
    """Write ``arrays`` (dict str -> ndarray) and JSON-able ``meta`` atomically to ``path``.

    ``path`` is used exactly as given (no ``.npz`` is appended). Dtypes and shapes are kept
    exactly. ``compress=True`` uses zip deflate (slower, smaller). A path ending in
    ``.safetensors`` writes that format (uncompressed; dtypes bool, (u)int8-64, float16/32/64).

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "ck.npz")
    >>> td.save_checkpoint(path, {"w": np.ones((2, 2), np.float32)}, {"step": 10})
    >>> arrays, meta = td.load_checkpoint(path)
    >>> arrays["w"].shape, meta["step"]
    ((2, 2), 10)
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict of str -> ndarray, got {type(arrays).__name__}")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    payload = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"array keys must be non-empty strings, got {key!r}")
        if key == META_KEY:
            raise ValueError(f"array key {key!r} is reserved for the metadata")
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise TypeError(f"arrays[{key!r}] has dtype {arr.dtype}; object arrays would need pickle, "
                            "expected a numeric or bool array")
        payload[key] = arr
    header = {"format": FORMAT, "version": VERSION, "meta": meta}
    text = json.dumps(header, default=_json_default)
    if is_safetensors(path):
        save_safetensors(path, payload, {META_KEY: text})
        return
    payload[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    writer = np.savez_compressed if compress else np.savez
    with atomic_write(path) as f:
        writer(f, **payload)


def load_checkpoint(path, expect_keys=()):
    """Read a checkpoint written by ``save_checkpoint``.  Returns ``(arrays, meta)``.

    ``expect_keys``: array keys that must be present (a ``CheckpointError`` lists any missing).
    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) for a file
    that is not a tinydiff checkpoint, has another format version, or holds object arrays.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "ck.npz")
    >>> td.save_checkpoint(path, {"w": np.zeros(3)})
    >>> td.load_checkpoint(path, expect_keys=("w", "b"))
    Traceback (most recent call last):
    ...
    tinydiff.checkpoint.CheckpointError: ...
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if is_safetensors(path):
        return _check_header(path, *_read_safetensors(path), expect_keys)
    if not zipfile.is_zipfile(path):       # an .npz is a zip archive; anything else is refused
        with open(path, "rb") as f:
            bare_npy = f.read(6) == b"\x93NUMPY"
        what = "a bare .npy array" if bare_npy else "not a readable .npz file (not a zip archive)"
        raise CheckpointError(f"checkpoint {path!r} is {what}; expected an .npz written by "
                              "save_checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}       # read everything now; the file closes
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CheckpointError(f"checkpoint {path!r} contains a pickled object array; refusing "
                                  "to load it (allow_pickle=False)") from e
        raise CheckpointError(f"checkpoint {path!r} is not a readable .npz file: {e}") from e
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError,
            RuntimeError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        # zipfile reports damaged headers with NotImplementedError ("compression method"),
        # RuntimeError ("encrypted") or KeyError, zlib a damaged deflate stream: all one thing here.
        raise CheckpointError(f"checkpoint {path!r} is not a readable .npz file ({type(e).__name__}: {e})") from e
    for key, value in arrays.items():          # np.load hands back raw bytes for a member that is not .npy
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"checkpoint {path!r}: entry {key!r} is not a NumPy array (damaged file?)")
    if META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path!r} has no {META_KEY!r} entry; it was not written "
                              "by tinydiff.checkpoint.save_checkpoint")
    raw = arrays.pop(META_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"checkpoint {path!r}: metadata is a {raw.dtype} array of shape {raw.shape}, "
                              "expected the uint8 bytes of a JSON text")
    return _check_header(path, arrays, raw.tobytes(), expect_keys)


def is_safetensors(path) -> bool:
    """Whether a checkpoint path is in the .safetensors format (by its name).

    >>> td.checkpoint.is_safetensors("out/run/checkpoint.safetensors"), td.checkpoint.is_safetensors("c.npz")
    (True, False)
    """
    return os.fspath(path).endswith(".safetensors")


def _read_safetensors(path):
    """(arrays, the metadata's JSON bytes) of a .safetensors checkpoint, or CheckpointError."""
    try:
        with open(path, "rb") as f:
            arrays, metadata = decode_safetensors(f.read(), path)
    except SafetensorsError as e:
        raise CheckpointError(str(e)) from e
    if META_KEY not in metadata:
        raise CheckpointError(f"checkpoint {path!r} has no {META_KEY!r} metadata; it was not written by "
                              "save_checkpoint (read bare weights with tinydiff.export.load_safetensors)")
    return arrays, metadata[META_KEY].encode("utf-8")


def _check_header(path, arrays, raw: bytes, expect_keys):
    """(arrays, meta) once the JSON header is a tinydiff checkpoint's of this version."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path!r}: metadata is not valid UTF-8 JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r}: metadata format is "
                              f"{header.get('format') if isinstance(header, dict) else header!r}, "
                              f"expected {FORMAT!r}")
    if header.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {header.get('version')!r}, "
                              f"this tinydiff reads version {VERSION}")
    missing = [k for k in expect_keys if k not in arrays]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is missing keys {missing}; "
                              f"it holds {sorted(arrays)}")
    return arrays, header["meta"]


def flatten_state(state, sep="/"):
    """``{'model': {'w': a}, 'opt': {'m': {'w': b}}}`` -> ``{'model/w': a, 'opt/m/w': b}``.

    Leaves are converted with ``np.asarray`` (a python int becomes a 0-d array). Keys must
    be strings without ``sep`` (``'.'`` is fine, so ``state_dict`` keys like
    ``'layers.0.weight'`` pass through). Empty sub-dicts are dropped.

    >>> sorted(td.checkpoint.flatten_state({"model": {"w": np.ones(2)}, "opt": {"m": {"w": 0}}}))
    ['model/w', 'opt/m/w']
    """
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if not isinstance(key, str) or not key or sep in key:
                raise ValueError(f"state key {key!r} under {prefix or '<root>'!r} must be a non-empty "
                                 f"string without the separator {sep!r}")
            name = prefix + sep + key if prefix else key
            if isinstance(value, dict):
                walk(value, name)
            elif isinstance(value, (list, tuple)):    # a list of arrays would stack silently
                raise TypeError(f"state[{name!r}] is a {type(value).__name__}; store sequences of "
                                "arrays as dicts {'0': a0, '1': a1, ...} or as one stacked array")
            else:
                flat[name] = np.asarray(value)

    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    walk(state, "")
    return flat


def unflatten_state(flat, sep="/"):
    """Inverse of ``flatten_state``: ``{'model/w': a}`` -> ``{'model': {'w': a}}``.

    >>> td.checkpoint.unflatten_state({"model/w": 1, "model/b": 2})
    {'model': {'w': 1, 'b': 2}}
    """
    nested = {}
    for name, value in flat.items():
        *parents, leaf = name.split(sep)
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {name!r} nests under {p!r}, which is also an array key")
        if leaf in node:
            raise ValueError(f"key {name!r} collides with a nested group of the same name")
        node[leaf] = value
    return nested


def split_arrays(state: dict):
    """Separate a nested state dict into arrays (for the .npz) and scalars (for the JSON
    metadata): {"lr": 0.1, "m": {"w": a}} -> ({"m": {"w": a}}, {"lr": 0.1}).

    >>> arrays, scalars = td.checkpoint.split_arrays({"lr": 0.1, "m": {"w": np.ones(2)}})
    >>> list(arrays["m"]), scalars
    (['w'], {'lr': 0.1})
    """
    arrays, scalars = {}, {}
    for key, value in state.items():
        if isinstance(value, dict):
            sub_arrays, sub_scalars = split_arrays(value)
            if sub_arrays:
                arrays[key] = sub_arrays
            if sub_scalars:
                scalars[key] = sub_scalars
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            arrays[key] = value
        else:
            scalars[key] = value.item() if isinstance(value, np.generic) else value
    return arrays, scalars


def merge_arrays(arrays: dict, scalars: dict) -> dict:
    """Inverse of ``split_arrays``: put the arrays and the scalars back into one nested dict.

    >>> td.checkpoint.merge_arrays({"m": {"w": 1}}, {"lr": 0.1, "m": {"step": 3}})
    {'m': {'w': 1, 'step': 3}, 'lr': 0.1}
    """
    merged = dict(arrays)
    for key, value in scalars.items():
        merged[key] = merge_arrays(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _to_json(obj):
    """Bit-generator state -> JSON types. MT19937 keeps its key in a uint32 array; its state
    setter accepts the list back, so arrays simply become lists."""
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    return obj


def rng_state_to_json(rng):
    """The exact state of a ``numpy.random.Generator`` as a JSON-serialisable dict.

    PCG64's 128-bit state and increment stay Python ints (JSON has no size limit on ints).

    >>> import json
    >>> rng = np.random.default_rng(0)
    >>> text = json.dumps(td.checkpoint.rng_state_to_json(rng))
    >>> td.checkpoint.rng_from_json(text).random() == rng.random()    # continues exactly
    True
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return _to_json(rng.bit_generator.state)


def rng_from_json(state):
    """A new Generator that continues exactly where the saved one stopped.

    ``state``: the dict from ``rng_state_to_json`` (or that dict as JSON text).

    >>> rng = np.random.default_rng(1); _ = rng.random(5)
    >>> copy = td.checkpoint.rng_from_json(td.checkpoint.rng_state_to_json(rng))
    >>> copy.integers(100, size=3).tolist() == rng.integers(100, size=3).tolist()
    True
    """
    if isinstance(state, (str, bytes)):
        state = json.loads(state)
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise ValueError(f"state must be a dict from rng_state_to_json (with a 'bit_generator' "
                         f"entry), got {state!r:.200}")
    name = state["bit_generator"]
    bitgen_cls = getattr(np.random, str(name), None)
    if not (isinstance(bitgen_cls, type) and issubclass(bitgen_cls, np.random.BitGenerator)):
        raise ValueError(f"state['bit_generator'] is {name!r}, expected a numpy BitGenerator name "
                         "such as 'PCG64'")
    bitgen = bitgen_cls()
    bitgen.state = state
    return np.random.Generator(bitgen)


__all__ = ["CheckpointError", "atomic_write", "save_checkpoint", "load_checkpoint", "flatten_state",
           "unflatten_state", "split_arrays", "merge_arrays", "rng_state_to_json", "rng_from_json"]
