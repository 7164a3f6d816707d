"""Writing preferences.json (a JSON list, one record a line) and its JSONL copy, streamed.

Each batch of lines comes as JSONL bytes (the renderer's Arrow buffer); the list's bytes are the
same with every line break but the last turned into ",\n" (a JSON line holds no raw line break).
A writer thread makes the list's bytes and does the file writes (they release the GIL) while the
next batch is rendered. Both files are the one writer's (data/atomic.py): they appear only when
complete.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from salmon_wf.data.atomic import atomic_file

Data = bytes | pa.Buffer  # what the writer writes: bytes, or an Arrow buffer as it is


class PreferenceFiles:
    """The open outputs: `write(lines)` appends a batch of JSON lines to both; `count` so far."""

    def __init__(self, writer: _Writer, as_list: BinaryIO, as_lines: BinaryIO | None) -> None:
        self.writer, self.as_list, self.as_lines = writer, as_list, as_lines
        self.count = 0

    def write(self, lines: list[str]) -> None:
        """Append JSON lines (without their line breaks)."""
        if lines:
            self.write_jsonl(("\n".join(lines) + "\n").encode("utf-8"), len(lines))

    def write_jsonl(self, chunk: bytes | pa.Buffer, count: int) -> None:
        """Append `count` lines given as JSONL bytes (each line ending in a line break)."""
        if not count:
            return
        lead = b"\n" if self.count == 0 else b",\n"
        self.writer.put(self.as_list, chunk, list_lead=lead)
        if self.as_lines is not None:
            self.writer.put(self.as_lines, chunk)
        self.count += count


@contextlib.contextmanager
def preference_files(json_path: Path, jsonl_path: Path | None) -> Iterator[PreferenceFiles]:
    """The JSON list at `json_path` (and the JSONL copy), replaced when the block succeeds."""
    copy = atomic_file(jsonl_path) if jsonl_path is not None else contextlib.nullcontext(None)
    with atomic_file(json_path) as as_list, copy as as_lines, _Writer() as writer:
        files = PreferenceFiles(writer, as_list, as_lines)
        writer.put(as_list, b"[")
        yield files
        writer.put(as_list, b"\n]\n" if files.count else b"]\n")


class _Writer:
    """A thread writing (handle, bytes) items in order; a write error is raised in the caller.

    An item with a `list_lead` is JSONL turned into list items by the thread (the lead, then
    every line break but the last as ",\\n"), so the main thread renders meanwhile.
    """

    def __init__(self, depth: int = 4) -> None:
        self.items: queue.Queue[tuple[BinaryIO, Data, bytes | None] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="aggregate-writer", daemon=True)

    def _run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    handle, data, lead = item
                    if lead is not None:
                        data = lead + bytes(memoryview(data)[:-1]).replace(b"\n", b",\n")
                    handle.write(data)
                except BaseException as exc:
                    self.error = exc

    def put(self, handle: BinaryIO, data: Data, list_lead: bytes | None = None) -> None:
        if self.error is not None:
            raise self.error
        self.items.put((handle, data, list_lead))

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
