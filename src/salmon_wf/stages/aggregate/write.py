"""Writing preferences.json (a JSON list, one record a line) and its JSONL copy, streamed.

Each batch of lines comes twice, as the renderer's Arrow buffers: JSONL bytes, and list items
(each line led by ",\n"; the list's first item goes without the comma). A writer thread per file
does the file writes (they release the GIL) while the next batch is rendered. Both files are the
one writer's (data/atomic.py): they appear only when complete.

The bytes reach a regular file by direct I/O where the file system takes it (O_DIRECT, whole
aligned blocks staged in a page-aligned buffer; the last partial block buffered): the outputs
are written once and not read back, and through the page cache the kernel's copy and
accounting cost more CPU than rendering the lines. Measured on 1M pairs (5.5 GB of output, 2
cores, Intel(R) Xeon(R) Processor with AMX): two threads writing 5.5 GB buffered took 5.6-8.5 s
and 8-14 s of system time, direct 2.5-2.8 s and 1 s of CPU (docs/benchmarks.md). Where direct
I/O is refused (tmpfs, some network file systems) the same bytes are written buffered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import mmap
import os
import queue
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from salmon_wf.data.atomic import atomic_file

Data = bytes | memoryview | pa.Buffer  # what the writer writes: bytes, or a buffer as it is
DIRECT_IO = hasattr(os, "O_DIRECT")  # write regular files by direct I/O where it is taken
STAGING = 8 << 20  # bytes per direct write: a multiple of any file system's block size


class PreferenceFiles:
    """The open outputs: `write(lines)` appends a batch of JSON lines to both; `count` so far."""

    def __init__(self, as_list: _Writer, as_lines: _Writer | None) -> None:
        self.as_list, self.as_lines = as_list, as_lines
        self.count = 0

    def write(self, lines: list[str]) -> None:
        """Append JSON lines (without their line breaks)."""
        if lines:
            jsonl = "".join(line + "\n" for line in lines).encode("utf-8")
            items = "".join(",\n" + line for line in lines).encode("utf-8")
            self.write_rendered(jsonl, items, len(lines))

    def write_rendered(self, jsonl: Data, items: Data, count: int) -> None:
        """Append `count` lines: as JSONL (each line and "\\n"), and as list items (",\\n", line).

        The first item of the list goes without its comma.
        """
        if not count:
            return
        self.as_list.put(memoryview(items)[1:] if self.count == 0 else items)
        if self.as_lines is not None:
            self.as_lines.put(jsonl)
        self.count += count


@contextlib.contextmanager
def preference_files(json_path: Path, jsonl_path: Path | None) -> Iterator[PreferenceFiles]:
    """The JSON list at `json_path` (and the JSONL copy), replaced when the block succeeds."""
    with contextlib.ExitStack() as stack:
        # Both files are opened before both writers, so both writer threads are joined (and a
        # late write error raised) before either file is committed: never a new JSONL copy next
        # to a failed list.
        list_file = stack.enter_context(atomic_file(json_path))
        lines_file = None if jsonl_path is None else stack.enter_context(atomic_file(jsonl_path))
        as_list = stack.enter_context(_Writer(list_file, direct=DIRECT_IO))
        as_lines = None
        if lines_file is not None:
            as_lines = stack.enter_context(_Writer(lines_file, direct=DIRECT_IO))
        files = PreferenceFiles(as_list, as_lines)
        as_list.put(b"[")
        yield files
        as_list.put(b"\n]\n" if files.count else b"]\n")


class _Writer:
    """A thread writing bytes items to one file in order; a write error is raised in the caller.

    One per file: the two files' writes overlap each other and the rendering instead of
    taking turns. `direct`: by a _DirectSink where the file system takes direct I/O.
    """

    def __init__(self, handle: BinaryIO, depth: int = 2, direct: bool = False) -> None:
        self.handle = handle
        self.items: queue.Queue[Data | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="aggregate-writer", daemon=True)
        self.direct = direct

    def _run(self) -> None:
        sink = _DirectSink.open(self.handle, STAGING) if self.direct else None
        write = self.handle.write if sink is None else sink.write
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    write(item)
                except BaseException as exc:
                    self.error = exc
        if sink is not None and self.error is None:
            try:
                sink.close()
            except BaseException as exc:
                self.error = exc

    def put(self, data: Data) -> None:
        if self.error is not None:
            raise self.error
        self.items.put(data)

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


class _DirectSink:
    """Appends bytes to a regular file by direct I/O: whole STAGING blocks from a page-aligned
    buffer, then the rest buffered at close (the file's handle is flushed and fsynced after,
    by atomic_file). Falls back to buffered writes for good when a direct write is refused."""

    def __init__(self, fd: int, flags: int, size: int = STAGING) -> None:
        self.fd, self.flags = fd, flags
        self.buffer = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
        self.staged = np.frombuffer(self.buffer, np.uint8)
        self.used = 0
        self.direct = True

    @classmethod
    def open(cls, handle: BinaryIO, size: int = STAGING) -> _DirectSink | None:
        """A sink on the handle's file, or None where direct I/O is not to be had."""
        try:
            handle.flush()
            fd = handle.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode) or os.lseek(fd, 0, os.SEEK_CUR) % size:
                return None  # not a regular file, or not at an aligned offset
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except (OSError, ValueError, io.UnsupportedOperation):
            return None
        return cls(fd, flags, size)

    def write(self, data: Data) -> None:
        source = np.frombuffer(data, np.uint8)
        while source.size:
            take = min(source.size, self.staged.size - self.used)
            np.copyto(self.staged[self.used : self.used + take], source[:take])
            self.used += take
            source = source[take:]
            if self.used == self.staged.size:
                self._flush_block()

    def _flush_block(self) -> None:
        view, written = memoryview(self.buffer), 0
        try:
            while written < view.nbytes:
                written += os.write(self.fd, view[written:])
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            self._buffered()  # the file system refused direct I/O: the rest goes buffered
            _write_all(self.fd, view[written:])
        self.used = 0

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self.flags)
            self.direct = False

    def close(self) -> None:
        """The last partial block, buffered; the file's flags as they were."""
        self._buffered()
        _write_all(self.fd, memoryview(self.buffer)[: self.used])
        self.used = 0


def _write_all(fd: int, data: memoryview) -> None:
    """os.write until every byte is written (a short write continues where it stopped)."""
    while data.nbytes:
        data = data[os.write(fd, data) :]
