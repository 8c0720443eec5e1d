"""tinydiff.export's .safetensors reader and writer (NumPy only): exact round trips, files that
the ``safetensors`` package and PyTorch read and write (the reference implementation as the
independent truth), a clear SafetensorsError for each fault of a header, and a Hypothesis fuzz
in which random and mutated bytes never raise anything else."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinydiff as td
from tinydiff.export import SafetensorsError, decode_safetensors, encode_safetensors

DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.float16, np.uint32, np.int32, np.float32,
          np.uint64, np.int64, np.float64]


def sample_arrays(seed=0):
    rng = np.random.default_rng(seed)
    arrays = {f"a.{np.dtype(d).name}": (rng.standard_normal((2, 3)) * 50).astype(d) for d in DTYPES}
    arrays.update({"scalar": np.array(3.5), "empty": np.zeros((0, 4), np.float32), "big.endian": np.arange(5, dtype=">i4"),
                   "bools": rng.random(7) > 0.5, "strided": np.arange(12.0).reshape(3, 4)[:, ::2]})
    return arrays


def same(a, b):
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape and x.dtype.newbyteorder("=") == y.dtype and x.tobytes() == y.astype(x.dtype).tobytes(), k


def test_round_trip_is_exact_for_every_dtype(tmp_path):
    arrays = sample_arrays()
    path = tmp_path / "w.safetensors"
    td.export.save_safetensors(path, arrays, {"who": "tinydiff"})
    same(arrays, td.export.load_safetensors(path))
    assert td.export.load_safetensors_metadata(path) == {"who": "tinydiff"}
    assert all(v.dtype.isnative for v in td.export.load_safetensors(path).values())


def test_files_cross_load_with_the_safetensors_package(tmp_path):
    reference = pytest.importorskip("safetensors.numpy")
    arrays = {k: v for k, v in sample_arrays().items()}
    ours = tmp_path / "ours.safetensors"
    td.export.save_safetensors(ours, arrays)
    same(arrays, reference.load_file(str(ours)))
    theirs = tmp_path / "theirs.safetensors"
    reference.save_file({k: v.astype(v.dtype.newbyteorder("="), order="C") for k, v in arrays.items()},
                        str(theirs), metadata={"format": "np"})
    same(arrays, td.export.load_safetensors(theirs))
    assert td.export.load_safetensors_metadata(theirs) == {"format": "np"}


def test_files_cross_load_with_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("safetensors.torch")
    model = td.models.UNet(base_channels=8, channel_mults=(1, 2), num_classes=10, rng=np.random.default_rng(0))
    path = tmp_path / "model.safetensors"
    td.export.save_safetensors(path, model.state_dict())
    twin = td.models.UNet(base_channels=8, channel_mults=(1, 2), num_classes=10, rng=np.random.default_rng(1))
    loaded = reference.load_file(str(path))                       # torch tensors
    assert all(isinstance(v, torch.Tensor) for v in loaded.values())
    same(model.state_dict(), {k: v.numpy() for k, v in loaded.items()})
    back = tmp_path / "from_torch.safetensors"
    reference.save_file({k: v * 2 for k, v in loaded.items()}, str(back))
    td.export.from_torch(td.export.load_safetensors(back), twin)
    same({k: 2 * v for k, v in model.state_dict().items()}, twin.state_dict())


# ---------------------------------------------------------------------- malformed files
def file_bytes(header, buffer=b"", length=None):
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return (len(text) if length is None else length).to_bytes(8, "little") + text + buffer


F32 = lambda shape, begin, end: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}  # noqa: E731
MALFORMED = {
    "too short": (b"\x01\x02", "too short for the 8-byte header length"),
    "header length too big": (file_bytes({}, length=2 ** 40), "exceeds the limit"),
    "header past the end": (file_bytes({}, length=100), "runs past the end of the file"),
    "bad json": (file_bytes(b'{"a": '), "not UTF-8 JSON"),
    "not utf-8": (file_bytes(b'{"\xff": 1}'), "not UTF-8 JSON"),
    "nan": (file_bytes(b'{"a": NaN}'), "NaN is not a JSON number"),
    "json list": (file_bytes([1, 2]), "expected an object"),
    "duplicate key": (file_bytes(b'{"a": {}, "a": {}}'), "'a' appears twice"),
    "metadata not strings": (file_bytes({"__metadata__": {"k": 1}}), "must map strings to strings"),
    "missing key": (file_bytes({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "expected exactly the keys"),
    "extra key": (file_bytes({"w": {**F32([1], 0, 4), "x": 1}}, b"\0" * 4), "expected exactly the keys"),
    "unknown dtype": (file_bytes({"w": {"dtype": "F31", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                      "unknown dtype 'F31'"),
    "bfloat16": (file_bytes({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\0" * 2),
                 "BF16 has no NumPy type"),
    "negative shape": (file_bytes({"w": F32([-1], 0, 4)}, b"\0" * 4), "not a list of non-negative integers"),
    "bool in shape": (file_bytes({"w": F32([True], 0, 4)}, b"\0" * 4), "not a list of non-negative integers"),
    "offsets not a pair": (file_bytes({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4),
                           "not a pair of integers"),
    "offsets reversed": (file_bytes({"w": F32([0], 4, 0)}, b"\0" * 4), "out of range"),
    "offsets out of range": (file_bytes({"w": F32([2], 0, 8)}, b"\0" * 4), "out of range"),
    "size mismatch": (file_bytes({"w": F32([2], 0, 4)}, b"\0" * 4), "need 8"),
    "overlap": (file_bytes({"a": F32([2], 0, 8), "b": F32([1], 4, 8)}, b"\0" * 8), "overlaps"),
    "gap": (file_bytes({"a": F32([1], 0, 4), "b": F32([1], 8, 12)}, b"\0" * 12), "unused bytes"),
    "not from zero": (file_bytes({"a": F32([1], 4, 8)}, b"\0" * 8), "unused bytes at \\[0, 4\\]"),
    "trailing garbage": (file_bytes({"a": F32([1], 0, 4)}, b"\0" * 6), "2 trailing bytes"),
    "bool byte": (file_bytes({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07"),
                  "holds byte value 7"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_each_malformed_header_is_a_clear_error(name, tmp_path):
    data, message = MALFORMED[name]
    with pytest.raises(SafetensorsError, match=message):
        decode_safetensors(data)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorsError, match="bad.safetensors: "):      # the file is named
        td.export.load_safetensors(path)


def test_writer_refuses_what_the_format_cannot_hold():
    with pytest.raises(TypeError, match="complex128 has no safetensors equivalent"):
        encode_safetensors({"z": np.zeros(2, complex)})
    with pytest.raises(ValueError, match="'__metadata__'"):
        encode_safetensors({"__metadata__": np.zeros(2)})
    with pytest.raises(TypeError, match="metadata must be a dict of str -> str"):
        encode_safetensors({"a": np.zeros(2)}, {"n": 1})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_raise_only_safetensors_error(data):
    try:
        decode_safetensors(data)
    except SafetensorsError:
        pass


VALID = encode_safetensors({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([True, False]),
                            "c": np.zeros((0, 2), np.int64)}, {"k": "v"})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(VALID)), st.binary(max_size=8))
def test_fuzz_mutated_files_raise_only_safetensors_error(flips, cut, tail):
    """A valid file with bytes changed (its length field and header included), truncated and
    extended: the reader returns arrays or raises SafetensorsError, nothing else."""
    data = bytearray(VALID)
    for position, value in flips:
        data[position] = value
    try:
        decode_safetensors(bytes(data[:cut]) + tail)
    except SafetensorsError:
        pass


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 40) | st.floats() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                        max_size=3), max_leaves=8)
entries = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "I64", "BOOL", "F16", "BF16", "X"]),
                                 "shape": st.lists(st.integers(-1, 4), max_size=3),
                                 "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3)})


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=3), entries | json_values, max_size=4), st.binary(max_size=40))
def test_fuzz_structured_headers_raise_only_safetensors_error(header, buffer):
    """Headers that are JSON and nearly right (offsets, shapes, dtypes drawn near valid values)."""
    try:
        arrays, _ = decode_safetensors(file_bytes(json.dumps(header).encode(), buffer))
    except SafetensorsError:
        return
    assert sum(v.nbytes for v in arrays.values()) == len(buffer)       # what loads tiles the buffer


# ---------------------------------------------------------------------- checkpoints in .safetensors
def test_checkpoints_save_and_load_safetensors_beside_npz(tmp_path):
    arrays, meta = {"model/w": np.ones((2, 2), np.float32), "step": np.array(4)}, {"step": 4, "lr": 1e-3}
    for name in ("c.npz", "c.safetensors"):
        td.save_checkpoint(tmp_path / name, arrays, meta)
        back, back_meta = td.load_checkpoint(tmp_path / name)
        same(arrays, back)
        assert back_meta == meta
    with pytest.raises(td.checkpoint.CheckpointError, match="missing keys"):
        td.load_checkpoint(tmp_path / "c.safetensors", expect_keys=("nope",))
    td.export.save_safetensors(tmp_path / "bare.safetensors", arrays)
    with pytest.raises(td.checkpoint.CheckpointError, match="was not written by save_checkpoint"):
        td.load_checkpoint(tmp_path / "bare.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05" + bytes(7))
    with pytest.raises(td.checkpoint.CheckpointError, match="runs past the end"):
        td.load_checkpoint(tmp_path / "bad.safetensors")


def test_a_trainer_checkpoints_and_resumes_in_safetensors(tmp_path):
    path = os.path.join(tmp_path, "checkpoint.safetensors")
    d = td.make_diffusion("eps", td.linear_beta_schedule(50))
    make = lambda: td.models.ToyMLP(hidden=16, rng=np.random.default_rng(0))   # noqa: E731
    data = td.data.make_dataset("8gaussians")
    whole = td.Trainer(make(), d, data, batch_size=16, log_every=0, seed=3)
    whole.train(6)
    first = td.Trainer(make(), d, data, batch_size=16, log_every=0, seed=3, checkpoint_path=path, checkpoint_every=3)
    first.train(3)
    resumed = td.Trainer(make(), d, data, batch_size=16, log_every=0, seed=3, checkpoint_path=path)
    resumed.resume(path)
    resumed.train(6)                                  # train(steps) runs until step == steps
    same(whole.model.state_dict(), resumed.model.state_dict())
