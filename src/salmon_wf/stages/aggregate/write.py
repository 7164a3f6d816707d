"""Writing preferences.json (a JSON list, one record a line) and its JSONL copy, streamed.

Each batch of lines comes twice, as the renderer's Arrow buffers: JSONL bytes, and list items
(each line led by ",\n"; the list's first item goes without the comma). A writer thread per file
does the file writes (they release the GIL) while the next batch is rendered. Both files are the
one writer's (data/atomic.py): they appear only when complete.
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
        as_list = stack.enter_context(_Writer(list_file))
        as_lines = None if lines_file is None else stack.enter_context(_Writer(lines_file))
        files = PreferenceFiles(as_list, as_lines)
        as_list.put(b"[")
        yield files
        as_list.put(b"\n]\n" if files.count else b"]\n")


class _Writer:
    """A thread writing bytes items to one file in order; a write error is raised in the caller.

    One per file: the two files' writes (kernel time, about as long as the rendering) run on
    both cores instead of taking turns on one.
    """

    def __init__(self, handle: BinaryIO, depth: int = 2) -> None:
        self.handle = handle
        self.items: queue.Queue[Data | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="aggregate-writer", daemon=True)

    def _run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    self.handle.write(item)
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
