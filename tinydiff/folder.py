"""The output folder: ready before any work is done, and one run in it at a time.

Learners fill disks, point --out at a file, and start a second run into a folder in use;
each ends in one line (``RunError``) before training, and nothing already there is lost:

    prepare_output_dir(folder, need_bytes)
                       create the output folder, prove it writable, check the free space,
                       and remove temporary files a killed run left behind.
    remove_temporaries(folder)
                       the ".<name>.<hex>.tmp" files an atomic write leaves only when killed
                       mid-write (``TEMPORARY`` matches their names).
    checkpoint_bytes(model)
                       about how much room one checkpoint of a model takes.
    FolderLock(folder) one run per output folder: fcntl.flock on OUT/.run.lock, which the
                       kernel drops when the process dies, so a killed run never leaves it stuck
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid

from .flags import RunError

# Temporary files of atomic_write / atomic_path: ".<name>.<12 hex digits>.tmp[<ext>]".
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp(\.[A-Za-z0-9]+)?$")


def remove_temporaries(folder) -> list:
    """Delete the temporary files (".<name>.<hex>.tmp") that atomic writes leave only when the
    process is killed mid-write. They are never read, so removing them loses nothing.
    Returns the names removed.

    >>> import tempfile
    >>> td.folder.remove_temporaries(tempfile.mkdtemp())
    []
    """
    removed = []
    for name in sorted(os.listdir(folder)):
        if TEMPORARY.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def prepare_output_dir(folder, need_bytes: int = 0, name: str = "--out", clean: bool = True) -> list:
    """Make sure ``folder`` can take this run's files before any work is done.

    Creates it (with parents), writes and deletes a probe file in it, and compares the free
    space with ``need_bytes`` (``shutil.disk_usage``; skipped when 0). Removes temporary files
    a killed run left (``remove_temporaries``; ``clean=False`` leaves them, for a caller that
    first locks the folder) and returns their names. Raises RunError naming
    the flag ``name`` and the folder when any of this fails. A disk that fills up later is
    still possible; the atomic writes then keep the previous files intact.

    >>> import os, tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "out", "toy2d")
    >>> td.folder.prepare_output_dir(folder), os.path.isdir(folder)     # created; no temporaries to remove
    ([], True)
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise RunError(f"{name} {folder}: this is a file, expected a folder for the outputs")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise RunError(f"{name} {folder}: cannot create the folder ({err.strerror or err})") from None
    probe = os.path.join(folder, f".write-probe.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(probe, "wb") as f:
            f.write(b"tinydiff")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise RunError(f"{name} {folder}: cannot write in this folder ({err.strerror or err})") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(probe)
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise RunError(f"{name} {folder}: {free / 1e6:.1f} MB free on this disk, but this run needs "
                           f"about {need_bytes / 1e6:.1f} MB (checkpoints and pictures); free some space "
                           f"or choose another {name}")
    return remove_temporaries(folder) if clean else []


def checkpoint_bytes(model) -> int:
    """About how many bytes one checkpoint of ``model`` takes: the weights, their EMA and Adam's
    two moments, i.e. 4 copies of the parameters. Writing one needs twice that on disk
    for a moment (the new file beside the old one).

    >>> td.folder.checkpoint_bytes(td.nn.Linear(10, 10, rng=np.random.default_rng(0)))   # 110 float32 x 4 copies
    1760
    """
    return 4 * sum(p.data.nbytes for p in model.parameters())


# ---------------------------------------------------------------- one process per output folder
class FolderLock:
    """An exclusive lock on an output folder, so two runs never write into one folder at once.

    ``acquire()`` takes ``fcntl.flock`` on ``<folder>/.run.lock`` and writes the holder into
    it (pid, host, start time, command); a second process gets a RunError naming that run.
    The kernel drops a flock when its process ends in any way (SIGKILL included), so a killed
    run never leaves the folder locked: its ``.run.lock`` is then a stale note that the next
    run takes over. ``release()`` removes the file and drops the lock. Within one process a
    new lock on a folder replaces an earlier one (a notebook re-running its cells, tests
    calling an example twice). Systems without ``fcntl`` (Windows) run without the lock.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> lock = td.folder.FolderLock(folder).acquire()
    >>> json.load(open(os.path.join(folder, ".run.lock")))["pid"] == os.getpid()
    True
    >>> lock.release(); os.listdir(folder)
    []
    """
    NAME = ".run.lock"
    held: dict = {}                     # real path of the folder -> the FolderLock this process holds

    def __init__(self, folder, flag_name: str = "--out"):
        self.folder, self.flag_name, self.fd = os.fspath(folder), flag_name, None
        self.path = os.path.join(self.folder, self.NAME)

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:             # no flock on this system: run unlocked
            return self
        key = os.path.realpath(self.folder)
        if key in FolderLock.held:      # this process's earlier run in the folder never finished
            FolderLock.held[key].release()
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                raise RunError(f"{self.flag_name} {self.folder}: another run is writing there ({holder}); "
                               f"wait for it to end, stop it, or choose another {self.flag_name}") from None
            try:                        # the holder before us removed the file after we opened it: retry
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunError(f"{self.flag_name} {self.folder}: could not lock the folder ({self.path} keeps changing)")
        note = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode(), 0)
        self.fd, FolderLock.held[key] = fd, self
        return self

    def _holder(self, fd) -> str:
        """'pid 123 on host, started 2026-01-01 10:00:00: python examples/toy2d.py --out x' from the file."""
        note = {}
        for _ in range(20):             # the holder may be writing its note at this very moment
            with contextlib.suppress(OSError, ValueError):
                note = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
            if note.get("pid") and _alive(note["pid"]):
                break
            time.sleep(0.05)
        if not note.get("pid"):
            return "its details are not written yet"
        return f"pid {note['pid']} on {note.get('host', '?')}, started {note.get('started', '?')}: {note.get('command', '?')}"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)        # first remove, then unlock: see the samestat check in acquire
        os.close(self.fd)
        self.fd = None
        if FolderLock.held.get(os.path.realpath(self.folder)) is self:
            del FolderLock.held[os.path.realpath(self.folder)]


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True                     # exists but is not ours (EPERM), or a strange note: assume alive
    return True


__all__ = ["TEMPORARY", "remove_temporaries", "prepare_output_dir", "checkpoint_bytes", "FolderLock"]
