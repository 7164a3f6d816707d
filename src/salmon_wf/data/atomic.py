"""The one way every stage writes an output file: whole, or not at all, readable by the group.

`atomic_file(path)` gives a handle on a temporary file beside `path`; when the block ends
normally the data is flushed, fsynced and the file renamed onto `path` (os.replace: a reader,
Snakemake or the next stage sees the old file or the complete new one, never half of it). When
the block raises, the temporary file is removed and an older `path` stays as it was.

The temporary file is created the way open() creates files, mode 0o666 less the user's umask
(O_CREAT | O_EXCL under a fresh name), not by mkstemp, whose private 0o600 made the intermediates
unreadable to a lab mate on a shared cluster. The handle is an ordinary file object, so a writer
thread may stream into it while the block runs (the aggregation's does); the block must outlive
that thread's writes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal, TextIO, overload

from salmon_wf.killpoint import kill_point

CREATE_MODE = 0o666  # open()'s own: the umask decides what the group and others may read
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path` that no other writer (process or thread) picks."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@overload
def atomic_file(
    path: str | os.PathLike[str], mode: Literal["wb"] = "wb"
) -> contextlib.AbstractContextManager[BinaryIO]: ...


@overload
def atomic_file(
    path: str | os.PathLike[str], mode: Literal["w"]
) -> contextlib.AbstractContextManager[TextIO]: ...


def atomic_file(
    path: str | os.PathLike[str], mode: Literal["wb", "w"] = "wb"
) -> contextlib.AbstractContextManager[BinaryIO | TextIO]:
    """A handle ("wb" bytes or "w" UTF-8 text) whose file replaces `path` when the block ends."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes a new file: mode 'wb' or 'w', not {mode!r}")
    return _atomic(Path(path), mode)


@contextlib.contextmanager
def _atomic(path: Path, mode: str) -> Iterator[BinaryIO | TextIO]:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # a clash needs the same pid and 32 random bits: a retry, not a loop in practice
        tmp = temporary_name(path)
        try:
            fd = os.open(tmp, _FLAGS, CREATE_MODE)
            break
        except FileExistsError:
            continue
    try:
        try:
            handle = os.fdopen(fd, mode, encoding="utf-8" if mode == "w" else None)
        except BaseException:
            os.close(fd)
            raise
        with handle:
            yield handle  # type: ignore[misc]
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        kill_point("atomic.rename")  # a test hook (killpoint.py); nothing when unset
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
