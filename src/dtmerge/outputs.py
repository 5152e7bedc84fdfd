"""The output policy every writing command follows (one helper, used everywhere).

- An output that is, contains, or lies inside one of the command's inputs is refused, always
  (paths resolved, symlinks followed): no command can write over what it reads.
- An existing output is refused unless the user asked to `overwrite` it (it is replaced only once
  the new output is complete: see `dtmerge.atomic`) or to `resume` the run that wrote it.
- A long run holds its output's writer lock while it runs: a second command on the same output is
  refused, not interleaved with the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from dtmerge.atomic import atomic_dir
from dtmerge.errors import DtmergeError


class OutputError(DtmergeError):
    """An output the policy refuses; the message names it and says why."""


def _resolved(path) -> Path:
    return Path(path).expanduser().resolve()


def overlap(output, input_) -> str | None:
    """How `output` overlaps `input_` ("is", "contains", "lies inside"), or None."""
    o, i = _resolved(output), _resolved(input_)
    if o == i:
        return "is"
    if o in i.parents:
        return "contains"
    if i in o.parents:
        return "lies inside"
    return None


def claim_outputs(outputs, inputs=(), overwrite: bool = False, resume: bool = False) -> None:
    """Check `outputs` against the policy before any work is done; raise OutputError if refused."""
    if overwrite and resume:
        raise OutputError("--overwrite and --resume exclude each other: continue the run, or replace it")
    for out in outputs:
        for inp in inputs:
            how = overlap(out, inp)
            if how:
                raise OutputError(f"{out}: the output {how} the input {inp}; choose another output")
        if (Path(out).exists() or Path(out).is_symlink()) and not (overwrite or resume):
            raise OutputError(f"{out} exists; pass --overwrite to replace it once the new output is complete, "
                              f"or choose another output")


@contextlib.contextmanager
def writer_lock(path):
    """Hold `path`'s writer lock (the file `.<name>.lock` beside it, removed on exit) for a block;
    while another process holds it, raise OutputError. Safe against a lock file removed meanwhile:
    the lock is kept only if the file locked is still the one at that name."""
    path = Path(path).resolve()  # one lock whatever name (a symlink, a relative path) the output is given by
    lock = path.parent / f".{path.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{path} is being written by another process; wait for it to finish, "
                              f"or choose another output") from None
        try:
            held = os.stat(lock)
            mine = os.fstat(fd)
            if (held.st_dev, held.st_ino) == (mine.st_dev, mine.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we opened it: lock the new one
    try:
        yield
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
        finally:
            os.close(fd)


@contextlib.contextmanager
def run_directory(path, overwrite: bool, resume: bool = False, resumable_from: str | None = None):
    """Where a long run writes, under its writer lock: `path` itself, or, when it replaces an
    existing run, a temporary sibling swapped in only once the run completes (a stopped replacement
    leaves the old run). An output that another run made after this one's claim is refused. A new
    run that fails before it wrote `resumable_from` (its first checkpoint) leaves nothing, so the
    same command can be retried."""
    path = Path(path)
    with writer_lock(path):
        if overwrite and path.exists():
            with atomic_dir(path) as tmp:
                yield tmp
            return
        if path.exists() and not resume:
            raise OutputError(f"{path} was made by another process after this command checked it; "
                              f"pass --resume to continue it, or choose another output")
        new = not path.exists()
        try:
            yield path
        except BaseException:
            if new and resumable_from and not (path / resumable_from).exists() and path.is_dir():
                shutil.rmtree(path)
            raise
