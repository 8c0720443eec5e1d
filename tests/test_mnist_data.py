"""Tests for tinydiff.data.mnist: the real files against published MNIST facts, each corruption
against a ValueError naming the file, the search order, and downloads from a local HTTP server
(this machine has no internet; every mirror here is 127.0.0.1 or a closed port)."""
import functools
import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import struct
import sys
import threading

import numpy as np
import pytest
from mnist_copy import MNIST_DIR, needs_mnist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinydiff.data import (MNIST, MNIST_FILES, MNIST_MD5, MNIST_MIRRORS, DownloadError, download_mnist,
                           from_model_space, load_mnist, mnist, mnist_dir, read_idx, to_model_space)
from tinydiff.gaussian import HALF_BIN


SHARED, needs_shared = MNIST_DIR, needs_mnist
NAMES = list(MNIST_FILES.values())
# Digits per class in the official 10,000-digit test split (LeCun et al.'s t10k files).
OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(magic, dims, body=b""):
    """An IDX file written from the format description: big-endian magic, dims, then the body."""
    return struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(body)


def image_file(n, rows=28, cols=28, seed=0):
    body = np.random.default_rng(seed).integers(0, 256, size=n * rows * cols, dtype=np.uint8)
    return idx_bytes(0x803, (n, rows, cols), body.tobytes())


def label_file(labels):
    return idx_bytes(0x801, (len(labels),), bytes(labels))


def put(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


# ---------------------------------------------------------------- the real files
@pytest.fixture(scope="module")
def real():
    """The four shared files read once: {key: array}."""
    if not SHARED.is_dir():
        pytest.skip(f"no MNIST copy at {SHARED}")
    return {key: read_idx(SHARED / name) for key, name in MNIST_FILES.items()}


@needs_shared
def test_real_files_take_their_counts_from_the_header(real):
    """Counts, shapes and dtypes agree with each header decoded here by struct: 10,000 each."""
    for key, name in MNIST_FILES.items():
        header = gzip.decompress((SHARED / name).read_bytes())[:16]
        n = struct.unpack(">I", header[4:8])[0]
        assert n == 10_000
        want = (n, 28, 28) if "images" in key else (n,)
        assert real[key].shape == want and real[key].dtype == np.uint8


@needs_shared
def test_real_test_split_is_the_official_one(real):
    """The official t10k split: first label 7, and its published per-class counts."""
    assert real["test-labels"][0] == 7
    assert np.bincount(real["test-labels"], minlength=10).tolist() == OFFICIAL_TEST_COUNTS
    assert set(real["train-labels"].tolist()) == set(range(10))
    assert real["train-images"].max() == 255 and real["train-images"].min() == 0


@needs_shared
def test_raw_and_gzip_give_the_same_arrays(real, tmp_path):
    """gzip.decompress written without .gz reads the same; detection is by bytes, not by name."""
    for key, name in MNIST_FILES.items():
        raw = gzip.decompress((SHARED / name).read_bytes())
        put(tmp_path / "raw", name.removesuffix(".gz"), raw)
        np.testing.assert_array_equal(read_idx(tmp_path / "raw" / name.removesuffix(".gz")), real[key])
    put(tmp_path, "misnamed.gz", raw)                                # raw bytes behind a .gz name
    np.testing.assert_array_equal(read_idx(tmp_path / "misnamed.gz"), real["test-labels"])
    images, labels = load_mnist("test", tmp_path / "raw")
    np.testing.assert_array_equal(images, real["test-images"])
    assert labels.dtype == np.int64 and (labels == real["test-labels"]).all()


@needs_shared
def test_load_mnist_limit_and_the_dataset_class(real):
    """limit keeps a prefix of the arrays read directly; MNIST holds what load_mnist returns."""
    images, labels = load_mnist("train", SHARED, limit=100)
    np.testing.assert_array_equal(images, real["train-images"][:100])
    np.testing.assert_array_equal(labels, real["train-labels"][:100])
    assert images.flags.writeable and images.base is None              # an array of its own
    ds = MNIST("test", SHARED)
    assert len(ds) == 10_000 and ds.labels[0] == 7 and ds.images.shape == (10_000, 28, 28)
    with pytest.raises(ValueError, match="limit must be"):
        load_mnist("test", SHARED, limit=-1)
    with pytest.raises(ValueError, match="split must be"):
        load_mnist("validation", SHARED)


# ---------------------------------------------------------------- corrupt files
@pytest.mark.parametrize("data, message", [
    (idx_bytes(0x802, (1, 28, 28), bytes(784)), "magic number 0x00000802, expected 0x00000803"),
    (idx_bytes(0x03080000, (1, 28, 28), bytes(784)), "magic number 0x03080000"),  # little-endian
    (b"\x00\x00", "too short for the 4-byte IDX magic"),
    (b"", "0 bytes"),
    (idx_bytes(0x803, (2, 28)), "header is 12 bytes, expected 16"),
    (image_file(2, 28, 27), "images are 28 x 27, expected 28 x 28"),
    (image_file(3)[:-1], r"short body .* 3 images, 2368 bytes in all, got 2367"),
    (image_file(3) + b"\x00", "extra bytes after the body"),
    (label_file([1, 2, 3])[:-2], r"short body .* 3 labels, 11 bytes in all, got 9"),
    (label_file([3, 9, 10, 0]), "label 10 at index 2, expected labels 0..9"),
    (gzip.compress(image_file(3))[:-20], "truncated or corrupt gzip"),
    (gzip.compress(image_file(3))[:12], "truncated or corrupt gzip"),
    (b"\x1f\x8b" + bytes(30), "truncated or corrupt gzip"),
])
def test_corrupt_files_are_value_errors_naming_the_file(tmp_path, data, message):
    """Each way a file can break gives a ValueError with the path and what was wrong."""
    path = put(tmp_path, "digits-idx3-ubyte.gz", data)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gzip_with_a_flipped_byte_is_refused(tmp_path):
    """gzip's CRC-32 (or inflate itself) catches one flipped byte in the compressed stream."""
    data = bytearray(gzip.compress(image_file(3, seed=1)))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="truncated or corrupt gzip"):
        read_idx(put(tmp_path, "x.gz", bytes(data)))


def test_load_mnist_checks_the_pair(tmp_path):
    """As many labels as images, and each file of the kind its slot expects."""
    img, lab = MNIST_FILES["test-images"], MNIST_FILES["test-labels"]
    put(tmp_path, img, gzip.compress(image_file(5)))
    put(tmp_path, lab, gzip.compress(label_file([1, 2, 3, 4])))
    with pytest.raises(ValueError, match="holds 5 images but .* holds 4 labels") as info:
        load_mnist("test", tmp_path)
    assert str(tmp_path / img) in str(info.value) and str(tmp_path / lab) in str(info.value)
    put(tmp_path, lab, gzip.compress(image_file(5)))                # images where labels belong
    with pytest.raises(ValueError, match="holds images .* expected labels"):
        load_mnist("test", tmp_path)


def _header_promise(data):
    """What a naive reader of the format description expects from ``data``: (shape, body) or None."""
    if data[:2] == b"\x1f\x8b":
        return None                                                  # checked by the round trip only
    if len(data) >= 16 and data[:4] == b"\x00\x00\x08\x03":
        n, rows, cols = struct.unpack(">3I", data[4:16])
        return (n, rows, cols), data[16:]
    if len(data) >= 8 and data[:4] == b"\x00\x00\x08\x01":
        return (struct.unpack(">I", data[4:8])[0],), data[8:]
    return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.sampled_from([b"", idx_bytes(0x803, (0, 28, 28)), idx_bytes(0x803, (1, 28, 28)),
                             idx_bytes(0x801, (0,)), idx_bytes(0x801, (3,)), b"\x1f\x8b",
                             b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]),
       tail=st.binary(max_size=1000))
def test_fuzz_random_bytes_raise_only_value_error(tmp_path, head, tail):
    """Random bytes: a ValueError, or (rarely) exactly what the header promises; nothing else."""
    data = head + tail
    try:
        arr = read_idx(put(tmp_path, "fuzz", data))
    except ValueError as e:
        assert "fuzz" in str(e)
        return
    shape, body = _header_promise(data)                             # None here would be a bug
    assert arr.shape == shape and arr.tobytes() == body and (arr.ndim == 3 or arr.max(initial=0) <= 9)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["images", "labels"]), zipped=st.booleans(), cut=st.floats(0.0, 1.0))
def test_fuzz_truncations_raise_value_error(tmp_path, kind, zipped, cut):
    """Every proper prefix of a valid file, raw or gzip, is a ValueError."""
    data = image_file(3, seed=2) if kind == "images" else label_file([7, 2, 1, 0, 4])
    data = gzip.compress(data) if zipped else data
    with pytest.raises(ValueError):
        read_idx(put(tmp_path, "cut", data[:int(cut * (len(data) - 1))]))


# ---------------------------------------------------------------- where the files are
@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: HOME in tmp_path, no $TINYDIFF_DATA, no $XDG_CACHE_HOME."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TINYDIFF_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return monkeypatch


def test_mnist_dir_resolution_order(env, tmp_path):
    """explicit > $TINYDIFF_DATA/mnist > $XDG_CACHE_HOME/tinydiff/mnist > ~/.cache/tinydiff/mnist."""
    assert mnist_dir() == tmp_path / "home" / ".cache" / "tinydiff" / "mnist"
    env.setenv("XDG_CACHE_HOME", "relative/cache")                   # the XDG spec: ignore relative
    assert mnist_dir() == tmp_path / "home" / ".cache" / "tinydiff" / "mnist"
    env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist_dir() == tmp_path / "xdg" / "tinydiff" / "mnist"
    env.setenv("TINYDIFF_DATA", str(tmp_path / "data"))
    assert mnist_dir() == tmp_path / "data" / "mnist"
    assert mnist_dir(tmp_path / "mine") == tmp_path / "mine"
    assert mnist_dir("~/x") == tmp_path / "home" / "x"


@needs_shared
def test_search_falls_through_to_the_cache_but_not_past_an_explicit_dir(env, tmp_path):
    """Files only in the cache: found from an empty $TINYDIFF_DATA, not from an explicit empty dir."""
    env.setenv("TINYDIFF_DATA", str(tmp_path / "data"))
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    shutil.copytree(SHARED, tmp_path / "home" / ".cache" / "tinydiff" / "mnist")
    assert mnist_dir() == tmp_path / "home" / ".cache" / "tinydiff" / "mnist"
    assert load_mnist("test")[1][0] == 7
    with pytest.raises(FileNotFoundError):
        load_mnist("test", tmp_path / "data" / "mnist")


def test_missing_files_message_names_every_folder_and_file(env, tmp_path):
    """The FileNotFoundError lists each folder searched, the four names and the ways to get them."""
    env.setenv("TINYDIFF_DATA", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError) as info:
        load_mnist("train")
    msg = str(info.value)
    for text in [str(tmp_path / "data" / "mnist"), str(tmp_path / "home" / ".cache" / "tinydiff" / "mnist"),
                 *NAMES, "download=True", "$TINYDIFF_DATA", MNIST_MIRRORS[0]]:
        assert text in msg


# ---------------------------------------------------------------- downloads, from 127.0.0.1
class Mirror(http.server.BaseHTTPRequestHandler):
    """GET /<mode>/<name>. ok: the file; corrupt: one byte flipped; short: the first half, sent
    completely; cut: promises the whole file, sends half, hangs up; nolength: no Content-Length."""
    files = {}
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        _, mode, name = self.path.split("/", 2)
        body = self.files.get(name)
        if body is None or mode not in ("ok", "corrupt", "short", "cut", "nolength"):
            self.send_error(404)
            return
        if mode == "corrupt":
            body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
        if mode == "short":
            body = body[:len(body) // 2]
        self.send_response(200)
        if mode != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if mode == "cut" else body)   # HTTP/1.0: then close


@pytest.fixture(scope="module")
def server():
    """A threaded HTTP server on 127.0.0.1 serving copies of the shared files; yields its base URL."""
    if not SHARED.is_dir():
        pytest.skip(f"no MNIST copy at {SHARED}")
    Mirror.files = {name: (SHARED / name).read_bytes() for name in NAMES}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def md5s():
    """The checksum table of the files the server holds, computed here (these are not the published
    MD5s: the shared train files are a re-encoded subset)."""
    return {name: hashlib.md5(data).hexdigest() for name, data in Mirror.files.items()}


@pytest.fixture
def dead():
    """A URL whose port was just closed: connecting is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/mnist/"


def test_download_lands_verified_files_and_says_where(server, md5s, tmp_path):
    """All four files arrive byte-identical; progress is logged; a second call fetches nothing."""
    lines, dest = [], tmp_path / "dl"
    assert download_mnist(dest, mirrors=[server + "/ok/"], checksums=md5s, log=lines.append) == dest
    assert sorted(os.listdir(dest)) == sorted(NAMES)                  # and no temporary files
    for name in NAMES:
        assert (dest / name).read_bytes() == Mirror.files[name]
    assert any("100%" in line for line in lines)                      # the 1.6 MB files, by quarters
    assert "  t10k-labels-idx1-ubyte.gz: md5 ok, 10000 labels" in lines and str(dest) in lines[-1]
    Mirror.requests.clear()
    download_mnist(dest, mirrors=[server + "/ok/"], checksums=md5s, log=lines.append)
    assert Mirror.requests == [] and "already in" in lines[-1]


def test_first_mirrors_down_then_the_next_works(server, md5s, dead, tmp_path):
    """A refused connection and an HTTP 404 are skipped, in order, and reported."""
    lines = []
    Mirror.requests.clear()
    download_mnist(tmp_path, mirrors=(dead, server + "/gone/", server + "/ok/"), checksums=md5s,
                   files=["test-labels"], log=lines.append)
    assert os.listdir(tmp_path) == [MNIST_FILES["test-labels"]]
    assert Mirror.requests == ["/gone/t10k-labels-idx1-ubyte.gz", "/ok/t10k-labels-idx1-ubyte.gz"]
    text = "\n".join(lines)
    assert "cannot connect" in text and "HTTP 404" in text


@pytest.mark.parametrize("mode, reason", [
    ("corrupt", "checksum mismatch"),
    ("cut", "interrupted transfer"),
    ("short", "truncated or corrupt gzip"),          # its md5 is injected: only read_idx can catch it
])
def test_bad_transfers_leave_nothing_behind(server, md5s, tmp_path, mode, reason):
    """Corrupted, interrupted or structurally bad: a DownloadError with the reason, an empty folder."""
    name = MNIST_FILES["test-images"]
    if mode == "short":
        md5s[name] = hashlib.md5(Mirror.files[name][:len(Mirror.files[name]) // 2]).hexdigest()
    with pytest.raises(DownloadError, match=reason):
        download_mnist(tmp_path, mirrors=[f"{server}/{mode}/"], checksums=md5s, files=["test-images"],
                       log=None)
    assert os.listdir(tmp_path) == []                                  # no file, no temporary file
    if mode == "corrupt":                                              # a good mirror after it wins
        download_mnist(tmp_path, mirrors=[f"{server}/corrupt/", f"{server}/ok/"], checksums=md5s,
                       files=["test-images"], log=None)
        assert (tmp_path / name).read_bytes() == Mirror.files[name]


def test_no_network_says_what_to_put_where(dead, tmp_path):
    """Every mirror refused: the message names each mirror, the folder and the four file names."""
    mirrors = (dead, dead.replace("/mnist/", "/other/"))
    with pytest.raises(DownloadError) as info:
        download_mnist(tmp_path / "cache", mirrors=mirrors, log=None)
    msg = str(info.value)
    for text in [*mirrors, str(tmp_path / "cache"), *NAMES]:
        assert text in msg
    assert os.listdir(tmp_path / "cache") == []


@pytest.mark.parametrize("url", ["http://example.com/mnist/", "ftp://127.0.0.1/mnist/", "file:///tmp/"])
def test_only_https_or_loopback_http_mirrors(tmp_path, url):
    """Plain http to another host (or another scheme) is refused before any connection or folder."""
    with pytest.raises(ValueError, match="only https:// mirrors"):
        download_mnist(tmp_path / "d", mirrors=[url], log=None)
    assert not (tmp_path / "d").exists()


def test_download_refuses_unknown_files_and_unchecked_names(tmp_path, server):
    """files= takes MNIST_FILES keys; a name without a checksum is never fetched."""
    with pytest.raises(ValueError, match="unknown"):
        download_mnist(tmp_path, mirrors=[server + "/ok/"], files=["t10k"], log=None)
    with pytest.raises(ValueError, match="no MD5"):
        download_mnist(tmp_path, mirrors=[server + "/ok/"], checksums={}, log=None)
    assert MNIST_MD5[MNIST_FILES["test-labels"]] == "ec29112dd5afa0611ce80d1b7f02629c"


@needs_shared
def test_load_mnist_downloads_only_the_missing_split(server, md5s, env, tmp_path):
    """download=True fetches the split's two files into $TINYDIFF_DATA/mnist and reads them."""
    env.setenv("TINYDIFF_DATA", str(tmp_path / "data"))
    env.setattr(mnist, "download_mnist",
                functools.partial(download_mnist, mirrors=[server + "/ok/"], checksums=md5s))
    images, labels = load_mnist("test", download=True, log=None)
    assert labels[0] == 7 and images.shape == (10_000, 28, 28)
    folder = tmp_path / "data" / "mnist"
    assert sorted(os.listdir(folder)) == sorted([MNIST_FILES["test-images"], MNIST_FILES["test-labels"]])


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("mode", ["ok", "nolength"])
def test_progress_rewrites_one_line_on_a_terminal(server, md5s, tmp_path, monkeypatch, mode):
    """With print to a terminal the progress is '\\r'-updated: a percentage if the size is known."""
    out = Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    download_mnist(tmp_path, mirrors=[f"{server}/{mode}/"], checksums=md5s, files=["test-images"])
    text = out.getvalue()
    assert "\r  t10k-images-idx3-ubyte.gz:" in text and " MB" in text
    assert ("100.0%" in text) == (mode == "ok")


# ---------------------------------------------------------------- model space
def test_model_space_puts_pixels_on_the_decoder_bin_centres():
    """k -> k/127.5 - 1 (float64 reference): -1 and +1 exact, centres 2 * HALF_BIN apart, inverse exact."""
    k = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = to_model_space(k)
    assert x.dtype == np.float32 and x.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(x.ravel(), np.arange(256) / 127.5 - 1.0, rtol=0, atol=1e-7)
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(np.diff(x.ravel()), 2 * HALF_BIN, rtol=0, atol=1e-6)
    back = from_model_space(x)
    assert back.dtype == np.float32 and back.shape == x.shape
    np.testing.assert_array_equal(np.round(255 * back).astype(np.uint8)[:, 0], k)
    assert from_model_space(np.array([-3.0, 3.0])).tolist() == [0.0, 1.0]   # clipped to [0, 1]
    assert MNIST.to_model_space is to_model_space
    with pytest.raises(ValueError, match="uint8"):
        to_model_space(k.astype(np.float32))
