"""Atomic file and directory writes: readers see the old version or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from dtmerge.validate import read_json_file

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp (and some writers) make 0600 files; use the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield an empty temporary directory; swap it in for `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o666 & ~_UMASK)
        if path.exists():
            swap(tmp, path)  # tmp now holds the old version (a directory, or a file being replaced)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_update(path, unchanged: dict[str, str] | None = None):
    """Yield a copy of directory `path` to change, swapped in for it in one step only if the block
    succeeds: several files change as one unit. The copy is made of hard links (no data copied), so
    files in it must be replaced by name (`atomic_path` and `write_json` do), never written into.
    `unchanged` (file name -> SHA-256) names files that must still be what the caller read: if
    another process replaced one meanwhile, nothing is swapped and ValueError says which."""
    path = Path(path).resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        shutil.copytree(path, tmp, symlinks=True, copy_function=os.link, dirs_exist_ok=True)
        for name, digest in (unchanged or {}).items():
            if file_sha256(tmp / name) != digest:
                raise ValueError(f"{path / name} changed while this command ran (another process wrote it); "
                                 f"run the command again")
        yield tmp
        swap(tmp, path)  # tmp now holds the old version
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


_RENAME_EXCHANGE = 2


def swap(a, b) -> None:
    """Exchange two paths in one step (Linux renameat2 RENAME_EXCHANGE), so no moment exists
    where neither version is in place; elsewhere, two renames."""
    a, b = os.fsencode(a), os.fsencode(b)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd = -100
        if renameat2(at_fdcwd, a, at_fdcwd, b, _RENAME_EXCHANGE) == 0:
            return
    middle = a + b".swap"
    os.replace(b, middle)
    os.replace(a, b)
    os.replace(middle, a)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path):
    """The JSON document in `path`, read within dtmerge's limits (see `dtmerge.validate`); a
    missing, unreadable or invalid file raises DtmergeError (a ValueError)."""
    return read_json_file(path)


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
