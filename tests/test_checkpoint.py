"""Tests for tinydiff.checkpoint: exact round trips, exact RNG resumption, crash safety."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tinydiff.checkpoint import (META_KEY, CheckpointError, atomic_write, flatten_state,
                                 load_checkpoint, rng_from_json, rng_state_to_json,
                                 save_checkpoint, unflatten_state)


def some_arrays():
    rng = np.random.default_rng(0)
    return {
        "w32": rng.normal(size=(3, 4)).astype(np.float32),
        "w64": rng.normal(size=(5,)),
        "f16": np.array([1.5, -2.25], dtype=np.float16),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
        "i64": np.array([2 ** 62, -7], dtype=np.int64),
        "u8": np.array([0, 255], dtype=np.uint8),
        "mask": np.array([True, False]),
        "scalar": np.float64(np.pi),
        "empty": np.zeros((0, 3), np.float32),
        "nan": np.array([np.nan, np.inf, -0.0], np.float32),
    }


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        v = np.asarray(v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
        assert got[k].tobytes() == v.tobytes(), k                     # bit-exact, incl. -0.0


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_is_exact(tmp_path, compress):
    path = tmp_path / "ckpt.npz"
    meta = {"step": 12, "loss": np.float32(0.25), "cfg": {"lr": 1e-3, "betas": [0.9, 0.999]},
            "name": "8gaussians ✓", "big": 2 ** 100}
    save_checkpoint(path, some_arrays(), meta, compress=compress)
    arrays, got_meta = load_checkpoint(path)
    assert_same(arrays, some_arrays())
    assert got_meta == {**meta, "loss": 0.25}                          # numpy scalar -> float


def test_nested_state_round_trip(tmp_path):
    state = {"model": {"layers.0.weight": np.ones((2, 2), np.float32), "layers.0.bias": np.zeros(2)},
             "opt": {"m": {"layers.0.weight": np.full((2, 2), 0.5)}, "t": 7},
             "ema": {"layers.0.weight": np.eye(2, dtype=np.float32)}}
    flat = flatten_state(state)
    assert "model/layers.0.weight" in flat and "opt/m/layers.0.weight" in flat
    save_checkpoint(tmp_path / "s.npz", flat, {})
    back = unflatten_state(load_checkpoint(tmp_path / "s.npz")[0])
    assert back.keys() == state.keys() and back["opt"]["m"].keys() == {"layers.0.weight"}
    np.testing.assert_array_equal(back["ema"]["layers.0.weight"], np.eye(2))
    assert back["opt"]["t"].dtype == np.int64 and back["opt"]["t"] == 7   # ints come back 0-d


def test_flatten_rejects_ambiguous_state():
    with pytest.raises(ValueError, match="without the separator"):
        flatten_state({"model": {"a/b": np.ones(1)}})
    with pytest.raises(TypeError, match=r"state\['opt/m'\] is a list"):
        flatten_state({"opt": {"m": [np.ones(1), np.ones(2)]}})
    with pytest.raises(ValueError, match="also an array key"):
        unflatten_state({"a": np.ones(1), "a/b": np.ones(1)})


@pytest.mark.parametrize("bitgen", ["PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"])
def test_rng_continues_identically_after_restore(tmp_path, bitgen):
    rng = np.random.Generator(getattr(np.random, bitgen)(1234))
    rng.normal(size=17)
    rng.integers(0, 10, size=3)
    rng.random(dtype=np.float32)                                      # leaves a buffered uint32
    save_checkpoint(tmp_path / "r.npz", {"x": np.ones(1)}, {"rng": rng_state_to_json(rng)})
    want = [rng.normal(size=5), rng.integers(0, 2 ** 40, size=4), rng.random(3, dtype=np.float32)]
    restored = rng_from_json(load_checkpoint(tmp_path / "r.npz")[1]["rng"])
    got = [restored.normal(size=5), restored.integers(0, 2 ** 40, size=4),
           restored.random(3, dtype=np.float32)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_rng_state_survives_json_text():
    rng = np.random.default_rng(99)
    text = json.dumps(rng_state_to_json(rng))
    assert rng_from_json(text).random() == rng.random()
    with pytest.raises(ValueError, match="bit_generator"):
        rng_from_json({"bit_generator": "NotAGenerator", "state": {}})


# ---------------------------------------------------------------- crash safety
def fail_replace(*args, **kwargs):
    raise OSError("simulated crash before rename")


def fail_fsync(fd):
    raise OSError("simulated crash while flushing to disk")


def fail_mid_write(file, **arrays):
    file.write(b"PK\x03\x04 half a zip file")                          # some bytes, then die
    raise MemoryError("simulated crash mid-write")


@pytest.mark.parametrize("target, boom", [(os, ("replace", fail_replace)),
                                          (os, ("fsync", fail_fsync)),
                                          (np, ("savez", fail_mid_write))])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, target, boom):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(3.0)}, {"step": 1})
    monkeypatch.setattr(target, *boom)
    with pytest.raises((OSError, MemoryError), match="simulated"):
        save_checkpoint(path, {"w": np.arange(3.0) + 100}, {"step": 2})
    monkeypatch.undo()
    arrays, meta = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["w"], np.arange(3.0))
    assert meta == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt.npz"]                        # no temp file left behind


def test_atomic_write_leaves_nothing_when_first_write_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "new.png") as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


CHILD = textwrap.dedent("""
    import sys, numpy as np
    from tinydiff.checkpoint import save_checkpoint
    path, i = sys.argv[1], 0
    while True:
        save_checkpoint(path, {"a": np.full(300_000, i, np.int64), "b": np.full(7, i)}, {"i": i})
        i += 1
        if i == 2:
            print("ready", flush=True)
""")


@pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.13])
def test_hard_kill_mid_save_leaves_a_complete_checkpoint(tmp_path, delay):
    path = tmp_path / "ckpt.npz"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    arrays, meta = load_checkpoint(path)                               # old or new, never torn
    assert meta["i"] >= 1
    assert np.all(arrays["a"] == meta["i"]) and np.all(arrays["b"] == meta["i"])
    strays = [p for p in os.listdir(tmp_path) if p != "ckpt.npz"]
    assert all(p.startswith(".ckpt.npz.") and p.endswith(".tmp") for p in strays)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_honours_umask(tmp_path):
    save_checkpoint(tmp_path / "c.npz", {"x": np.ones(1)})
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "c.npz").st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- validation
def write_raw_npz(path, meta_header, **arrays):
    text = json.dumps(meta_header).encode()
    np.savez(path, **arrays, **{META_KEY: np.frombuffer(text, np.uint8)})


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", x=np.ones(2))
    with pytest.raises(CheckpointError, match="not written by tinydiff"):
        load_checkpoint(tmp_path / "plain.npz")
    np.save(tmp_path / "bare.npy", np.ones(2))
    with pytest.raises(CheckpointError, match="bare .npy"):
        load_checkpoint(tmp_path / "bare.npy")
    write_raw_npz(tmp_path / "v99.npz", {"format": "tinydiff-checkpoint", "version": 99, "meta": {}})
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.npz")
    save_checkpoint(tmp_path / "ok.npz", {"model/w": np.ones(2)})
    with pytest.raises(CheckpointError, match=r"missing keys \['ema/w'\].*model/w"):
        load_checkpoint(tmp_path / "ok.npz", expect_keys=["model/w", "ema/w"])


def test_pickled_object_array_is_refused(tmp_path):
    header = {"format": "tinydiff-checkpoint", "version": 1, "meta": {}}
    write_raw_npz(tmp_path / "evil.npz", header, obj=np.array([{"x": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled object array"):
        load_checkpoint(tmp_path / "evil.npz")


def test_save_errors_are_clear(tmp_path):
    with pytest.raises(TypeError, match=r"arrays\['o'\] has dtype object"):
        save_checkpoint(tmp_path / "a.npz", {"o": np.array([None])})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "a.npz", {META_KEY: np.ones(1)})
    with pytest.raises(TypeError, match="meta must hold only JSON types.*ndarray"):
        save_checkpoint(tmp_path / "a.npz", {"x": np.ones(1)}, {"bad": np.ones(2)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_checkpoint(tmp_path / "no_such_dir" / "a.npz", {"x": np.ones(1)})
    assert os.listdir(tmp_path) == []
