"""The output policy every writing command follows (one helper, used everywhere).

- An output that is, contains, or lies inside one of the command's inputs is refused, always
  (paths resolved, symlinks followed): no command can write over what it reads.
- An existing output is refused unless the user asked to `overwrite` it (it is replaced only once
  the new output is complete: see `dtmerge.atomic`) or to `resume` the run that wrote it.
"""

from __future__ import annotations

import contextlib
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
def run_directory(path, overwrite: bool):
    """Where a long run writes: `path` itself, or, when it replaces an existing run, a temporary
    sibling swapped in only once the run completes (a stopped replacement leaves the old run)."""
    if overwrite and Path(path).exists():
        with atomic_dir(path) as tmp:
            yield tmp
    else:
        yield Path(path)
