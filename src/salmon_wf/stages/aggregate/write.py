"""Writing preferences.json (a JSON list, one record a line) and its JSONL copy, streamed.

Each batch of lines comes twice, as the renderer's Arrow buffers: JSONL bytes, and list items
(each line led by ",\n"; the list's first item goes without the comma). A writer thread does the
file writes (they release the GIL) while the next batch is rendered. Both files are the one
writer's (data/atomic.py): they appear only when complete.
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

Data = bytes | memoryview | pa.Buffer  # what the writer writes: bytes, or a buffer as it is


class PreferenceFiles:
    """The open outputs: `write(lines)` appends a batch of JSON lines to both; `count` so far."""

    def __init__(self, writer: _Writer, as_list: BinaryIO, as_lines: BinaryIO | None) -> None:
        self.writer, self.as_list, self.as_lines = writer, as_list, as_lines
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
        self.writer.put(self.as_list, memoryview(items)[1:] if self.count == 0 else items)
        if self.as_lines is not None:
            self.writer.put(self.as_lines, jsonl)
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
    """A thread writing (handle, bytes) items in order; a write error is raised in the caller."""

    def __init__(self, depth: int = 4) -> None:
        self.items: queue.Queue[tuple[BinaryIO, Data] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="aggregate-writer", daemon=True)

    def _run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    item[0].write(item[1])
                except BaseException as exc:
                    self.error = exc

    def put(self, handle: BinaryIO, data: Data) -> None:
        if self.error is not None:
            raise self.error
        self.items.put((handle, data))

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
