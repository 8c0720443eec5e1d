"""MNIST handwritten digits: read the IDX files, find them on disk, download them safely.

The four standard files hold 28 x 28 grey-level digits (0 = background, 255 = ink) and
their labels 0..9: 60,000 training digits and the official 10,000 test digits. The
files are IDX, a big-endian binary format; gzip or raw files are both read, told apart
by the gzip magic bytes 1f 8b, never by the file name.

    offset  bytes   images file (idx3)                  labels file (idx1)
    0       4       magic 0x00000803                    magic 0x00000801
                    (0, 0, type 0x08 = ubyte, 3 dims)   (0, 0, 0x08, 1 dim)
    4       4       N, the number of images             N, the number of labels
    8       4       rows = 28                           N labels, one byte each
    12      4       cols = 28
    16      N*784   pixels, image by image, row-major

``read_idx`` checks everything the header promises (the magic, 28 x 28, a body of
exactly the promised length, labels <= 9) and raises a ValueError naming the file and
what was wrong. N always comes from the header, never assumed to be 60,000: the copy in
``../shared/data/mnist`` used by tests and CI has 10,000 training digits. A body *longer*
than promised is refused too: the header and the bytes then disagree, and the reader
cannot tell which of them to believe.

Where the files are looked for (``mnist_dir``), in order:
    1. an explicit ``data_dir`` (then nowhere else: a typo should not read another copy);
    2. ``$TINYDIFF_DATA/mnist``;
    3. the user cache, ``$XDG_CACHE_HOME/tinydiff/mnist`` or ``~/.cache/tinydiff/mnist``.
Each name may be the ``.gz`` file or the same name without ``.gz``.

Download (``download_mnist``): each missing file is fetched over HTTPS from the mirrors
in ``MNIST_MIRRORS``, tried in order, streamed into a hidden temporary file beside its
destination while its MD5 is computed, checked against the published ``MNIST_MD5``
and parsed with ``read_idx``; only then is it renamed into place (``os.replace``, atomic).
Any failure (refused connection, HTTP error, dropped transfer, wrong checksum) deletes
the temporary file and moves on to the next mirror. Checksums are checked on download
only; files already on disk are validated by structure alone.

References: Y. LeCun, L. Bottou, Y. Bengio and P. Haffner (1998), "Gradient-based
learning applied to document recognition", Proc. IEEE 86(11):2278-2324. The IDX format
is described on the MNIST page, http://yann.lecun.com/exdb/mnist/ ("file formats").
"""
import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from contextlib import suppress
from pathlib import Path

import numpy as np

MNIST_FILES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}
# MD5 of the published .gz files (the table torchvision and most loaders carry).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",                      # torchvision's first
    "https://storage.googleapis.com/cvdf-datasets/mnist/",                 # TensorFlow's
    "https://sagemaker-sample-files.s3.amazonaws.com/datasets/image/MNIST/",
)

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
ROWS = COLS = 28
CHUNK = 1 << 16                          # bytes per read while streaming a download
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class DownloadError(OSError):
    """No mirror delivered a file that passed its checksum; the message says what to do by hand.

    >>> issubclass(td.data.DownloadError, OSError) or issubclass(td.data.DownloadError, Exception)
    True
    """


# ---------------------------------------------------------------- reading
def _unzip(raw, path):
    """The bytes of ``path`` with gzip removed if they start with the gzip magic 1f 8b."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, zlib.error, OSError) as e:     # gzip.BadGzipFile is an OSError
        raise ValueError(f"MNIST file {path}: truncated or corrupt gzip ({e})") from e


def read_idx(path):
    """Read one MNIST IDX file, gzip or raw.  Returns uint8 images [N, 28, 28] or labels [N].

    Raises ValueError naming ``path`` for a wrong magic number, an incomplete header,
    images that are not 28 x 28, a body shorter or longer than the header promises,
    a truncated or corrupt gzip stream, or a label above 9.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(path, "wb") as f:                           # magic 0x801 (labels), 3 labels, then the labels
    ...     _ = f.write((0x801).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([7, 2, 1]))
    >>> td.data.read_idx(path).tolist()
    [7, 2, 1]
    """
    path = Path(path)
    data = _unzip(path.read_bytes(), path)
    if len(data) < 4:
        raise ValueError(f"MNIST file {path}: {len(data)} bytes, too short for the 4-byte IDX magic number")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise ValueError(f"MNIST file {path}: magic number 0x{magic:08x}, expected 0x{IMAGES_MAGIC:08x} "
                         f"(images) or 0x{LABELS_MAGIC:08x} (labels)")
    images = magic == IMAGES_MAGIC
    header = 16 if images else 8
    if len(data) < header:
        raise ValueError(f"MNIST file {path}: header is {len(data)} bytes, expected {header}")
    n = int.from_bytes(data[4:8], "big")
    if images:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        if (rows, cols) != (ROWS, COLS):
            raise ValueError(f"MNIST file {path}: images are {rows} x {cols}, expected {ROWS} x {COLS}")
    want = header + n * (ROWS * COLS if images else 1)
    if len(data) != want:
        what = "short body (truncated?)" if len(data) < want else "extra bytes after the body"
        raise ValueError(f"MNIST file {path}: {what}: the header promises {n} "
                         f"{'images' if images else 'labels'}, {want} bytes in all, got {len(data)}")
    body = np.frombuffer(data, dtype=np.uint8, offset=header).copy()   # writable, unlike the bytes
    if images:
        return body.reshape(n, ROWS, COLS)
    if n and body.max() > 9:
        i = int(np.argmax(body > 9))
        raise ValueError(f"MNIST file {path}: label {body[i]} at index {i}, expected labels 0..9")
    return body


# ---------------------------------------------------------------- finding
def _cache_dir():
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"   # XDG spec: ignore relative
    return base / "tinydiff" / "mnist"


def _candidates(data_dir=None):
    """The folders searched, in order (see the module docstring)."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("TINYDIFF_DATA", "")
    return ([Path(env).expanduser() / "mnist"] if env else []) + [_cache_dir()]


def _locate(folder, name):
    """``folder/name`` or ``folder/name`` without ``.gz``, whichever exists; None if neither."""
    for p in (folder / name, folder / name.removesuffix(".gz")):
        if p.is_file():
            return p
    return None


def _first_holding(names, data_dir):
    for folder in _candidates(data_dir):
        if all(_locate(folder, name) for name in names):
            return folder
    return None


def mnist_dir(data_dir=None):
    """The MNIST folder: the first candidate (explicit ``data_dir``, ``$TINYDIFF_DATA/mnist``,
    the user cache) holding all four files; if none does, the first candidate, which is
    where ``download_mnist`` puts them.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> str(td.data.mnist_dir(folder)) == folder              # where the files are, or where they will go
    True
    """
    return _first_holding(MNIST_FILES.values(), data_dir) or _candidates(data_dir)[0]


def _by_hand(folder):
    names = "\n".join(f"    {name}" for name in MNIST_FILES.values())
    return (f"To install by hand, put these four files (gzip, or unpacked without .gz):\n{names}\n"
            f"in the folder\n    {folder}\nfrom any mirror in MNIST_MIRRORS (e.g. {MNIST_MIRRORS[0]}), or "
            "set $TINYDIFF_DATA to a folder whose mnist/ subfolder holds them, or pass data_dir=.")


# ---------------------------------------------------------------- downloading
def _check_mirror(url):
    """``url`` with a trailing '/'; https only, except http to this machine (test servers)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
        raise ValueError(f"mirror {url!r}: only https:// mirrors are allowed (http:// only for "
                         f"{' / '.join(LOOPBACK)}); got scheme {parts.scheme!r}")
    return url if url.endswith("/") else url + "/"


def _open(url, timeout):
    if urllib.parse.urlsplit(url).hostname in LOOPBACK:     # never send a local request to a proxy
        return urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=timeout)
    return urllib.request.urlopen(url, timeout=timeout)


class _Progress:
    """One line rewritten with '\\r' when ``log`` is print to a terminal; else, for files over
    1 MB of known size, a line per quarter."""

    def __init__(self, name, total, log, enabled):
        self.name, self.total, self.log = name, total, log
        self.tty = enabled and log is print and sys.stdout.isatty()
        self.quarters = enabled and not self.tty and bool(total) and total > 1e6  # small: no noise
        self.next = 0.25

    def __call__(self, done):
        mb = f"{done / 1e6:.1f}" + (f" / {self.total / 1e6:.1f} MB" if self.total else " MB")
        if self.tty:
            pct = f"{100 * done / self.total:5.1f}%  " if self.total else ""
            sys.stdout.write(f"\r  {self.name}: {pct}{mb}")
            sys.stdout.flush()
        while self.quarters and done >= self.next * self.total:
            self.log(f"  {self.name}: {round(100 * self.next)}% ({mb})")
            self.next += 0.25

    def close(self):
        if self.tty:
            sys.stdout.write("\n")


def _fetch(url, dest, md5, *, timeout, progress, log):
    """Stream ``url`` into a hidden temporary file beside ``dest``; rename it to ``dest`` only if
    its MD5 is ``md5`` and ``read_idx`` accepts it. On any failure the temporary file is deleted."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        with _open(url, timeout) as response, open(tmp, "xb") as f:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            show = _Progress(dest.name, total, log, progress)
            digest, done = hashlib.md5(), 0
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    show(done)
            finally:
                show.close()
            if total is not None and done != total:      # a dropped connection can end the loop quietly
                raise ValueError(f"interrupted transfer: {done} of {total} bytes")
            f.flush()
            os.fsync(f.fileno())                         # on disk before the rename publishes it
        if digest.hexdigest() != md5:
            raise ValueError(f"checksum mismatch: md5 {digest.hexdigest()}, expected {md5}")
        arr = read_idx(tmp)                              # the structure, before anyone can see it
        os.replace(tmp, dest)
        return arr
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _reason(e):
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    return f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)


def download_mnist(data_dir=None, *, mirrors=MNIST_MIRRORS, checksums=MNIST_MD5, files=None,
                   progress=True, timeout=30, log=print):
    """Fetch the MNIST files missing from ``mnist_dir(data_dir)``; return that folder.

    files: keys of ``MNIST_FILES`` to fetch (default all four); those already present are
    skipped without any network access. mirrors: base URLs tried in order (https, or http
    to 127.0.0.1 / localhost only). checksums: file name -> MD5 hex of the .gz file.
    timeout: seconds a connection or a read may stall. log: a print-like function (None for silence);
    progress percentages go on one line when log is print to a terminal.
    Raises DownloadError, listing each mirror's failure and the files to install by hand.

    >>> folder = td.data.download_mnist()                     # doctest: +SKIP
    MNIST: 4 file(s) saved in /home/you/.cache/tinydiff/mnist
    """
    log = log or (lambda *args: None)
    mirrors = [_check_mirror(m) for m in ([mirrors] if isinstance(mirrors, str) else mirrors)]
    if not mirrors:
        raise ValueError("mirrors is empty; expected at least one base URL")
    keys = list(MNIST_FILES) if files is None else [files] if isinstance(files, str) else list(files)
    unknown = [k for k in keys if k not in MNIST_FILES]
    if unknown:
        raise ValueError(f"files {unknown} are unknown; expected keys of MNIST_FILES: {list(MNIST_FILES)}")
    names = [MNIST_FILES[k] for k in keys]
    unchecked = [name for name in names if name not in checksums]
    if unchecked:
        raise ValueError(f"checksums has no MD5 for {unchecked}; a download is never accepted unchecked")
    folder = mnist_dir(data_dir)
    todo = [name for name in names if _locate(folder, name) is None]
    if not todo:
        log(f"MNIST: {len(names)} file(s) already in {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in todo:
        failures = []
        for mirror in mirrors:
            url = mirror + name
            log(f"MNIST: downloading {url}")
            try:
                arr = _fetch(url, folder / name, checksums[name], timeout=timeout, progress=progress, log=log)
                log(f"  {name}: md5 ok, {len(arr)} {'images' if arr.ndim == 3 else 'labels'}")
                break
            except (OSError, ValueError, http.client.HTTPException) as e:   # URLError, timeouts, bad data
                failures.append(f"    {url}: {_reason(e)}")
                log(f"  failed: {_reason(e)}")
        else:
            raise DownloadError(f"could not download {name} from any mirror:\n" + "\n".join(failures)
                                + "\n" + _by_hand(folder))
    log(f"MNIST: {len(todo)} file(s) saved in {folder}")
    return folder


# ---------------------------------------------------------------- loading
def load_mnist(split="train", data_dir=None, *, download=False, limit=None, log=print):
    """Images uint8 [N, 28, 28] and labels int64 [N] of ``split`` ("train" or "test").

    Reads from the first folder in the search order (module docstring) that holds both
    files of the split. download=True fetches the split's two files if none does.
    limit: keep only the first ``limit`` digits (after validating the whole files).
    log: where download messages go (print-like, or None).
    Raises FileNotFoundError naming every folder searched and how to get the files.

    >>> images, labels = td.data.load_mnist("test", limit=100)          # doctest: +SKIP
    >>> images.shape, images.dtype, labels[:5]                          # doctest: +SKIP
    ((100, 28, 28), dtype('uint8'), array([7, 2, 1, 0, 4]))
    >>> import tempfile
    >>> td.data.load_mnist("test", data_dir=tempfile.mkdtemp())        # an empty folder: says what to do
    Traceback (most recent call last):
    ...
    FileNotFoundError: MNIST test split not found: ...
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    keys = (f"{split}-images", f"{split}-labels")
    names = [MNIST_FILES[k] for k in keys]
    folder = _first_holding(names, data_dir)
    if folder is None and download:
        folder = download_mnist(data_dir, files=keys, log=log)
    if folder is None:
        searched = "\n".join(f"    {f}" for f in _candidates(data_dir))
        raise FileNotFoundError(
            f"MNIST {split} split not found: no folder holds {names[0]} and {names[1]} (or the same "
            f"names without .gz). Searched, in order:\n{searched}\nPass download=True to fetch them "
            "(from MNIST_MIRRORS, checked against MNIST_MD5). "
            + _by_hand(_candidates(data_dir)[0]))
    image_path, label_path = (_locate(folder, name) for name in names)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise ValueError(f"MNIST file {image_path}: holds labels (magic 0x{LABELS_MAGIC:08x}), "
                         f"expected images (0x{IMAGES_MAGIC:08x})")
    if labels.ndim != 1:
        raise ValueError(f"MNIST file {label_path}: holds images (magic 0x{IMAGES_MAGIC:08x}), "
                         f"expected labels (0x{LABELS_MAGIC:08x})")
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split} split: {image_path} holds {len(images)} images but "
                         f"{label_path} holds {len(labels)} labels; expected as many labels as images")
    if limit is not None:
        images = images[:limit].copy()                   # not a view that keeps all N alive
    return images, labels[:limit].astype(np.int64)


# ---------------------------------------------------------------- model space
def to_model_space(images):
    """uint8 images [N, 28, 28] -> float32 x [N, 1, 28, 28] in [-1, 1]:  x = k / 127.5 - 1.

    Pixel value k in {0, ..., 255} lands on the centre of bin k of the discretized decoder
    of the diffusion bound (DDPM, Ho et al. 2020, eq. 13; ``tinydiff.gaussian.
    discretized_gaussian_log_likelihood``): 256 bins of width 2/255 centred on k / 127.5 - 1,
    so 0 -> -1 and 255 -> +1 exactly.

    >>> x = td.data.to_model_space(np.array([[[0, 128, 255]]], dtype=np.uint8))
    >>> x.shape, [round(v, 4) for v in x.ravel().tolist()]     # [N, 1, H, W]; 0 -> -1, 255 -> 1
    ((1, 1, 1, 3), [-1.0, 0.0039, 1.0])
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"images must be uint8 [N, H, W] (pixel values 0..255), got {images.dtype} "
                         f"with shape {images.shape}")
    return (images.astype(np.float32) / np.float32(127.5) - np.float32(1.0))[:, None]   # [N, 1, H, W]


def from_model_space(x):
    """Inverse of ``to_model_space``: x in [-1, 1] -> float32 (x + 1) / 2 in [0, 1], clipped,
    shape kept (for pictures; ``np.round(255 * from_model_space(x))`` recovers the pixels).

    >>> td.data.from_model_space(np.array([-1.0, 0.0, 1.0, 1.5])).tolist()   # clipped to [0, 1]
    [0.0, 0.5, 1.0, 1.0]
    """
    x = np.asarray(x, dtype=np.float32)
    return np.clip((x + np.float32(1.0)) * np.float32(0.5), 0.0, 1.0)


class MNIST:
    """One MNIST split in memory: ``images`` uint8 [N, 28, 28], ``labels`` int64 [N].

    ``MNIST("test").to_model_space(ds.images)`` gives the float32 [N, 1, 28, 28] the models
    train on (see ``to_model_space`` for the scaling and why).

    >>> test = td.data.MNIST("test", limit=1000)              # doctest: +SKIP
    >>> test, test.to_model_space(test.images).shape          # doctest: +SKIP
    (MNIST(split='test', n=1000), (1000, 1, 28, 28))
    """

    to_model_space = staticmethod(to_model_space)
    from_model_space = staticmethod(from_model_space)

    def __init__(self, split="train", data_dir=None, download=False, limit=None):
        self.split = split
        self.images, self.labels = load_mnist(split, data_dir, download=download, limit=limit)

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return f"MNIST(split={self.split!r}, n={len(self)})"
