"""JSON-lines files: strict reading, atomic writing, and resumable append-only shard outputs.

A shard job appends one complete record (or one complete group of records) at a time to
`<output>.partial`, beside a `<output>.partial.json` stamp holding the job's fingerprint. A killed
job leaves the partial file; the rerun keeps its complete lines (dropping a torn last line) when
the fingerprint matches, skips that work, and renames the partial file to the output at the end.
The output itself is never half-written, so Snakemake never mistakes a partial shard for a done one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

from salmon_wf.data.atomic import atomic_file
from salmon_wf.errors import RecordError, SalmonError
from salmon_wf.killpoint import kill_point


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False)


def parse_record(
    path: Path, number: int, line: str, error: type[SalmonError] = RecordError
) -> dict[str, Any]:
    """One JSON-object line; `error` (naming the file and line) when it is not one."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"invalid JSON ({exc.msg})", file=path, line=number) from exc
    except RecursionError as exc:
        raise error("invalid JSON (nested too deeply)", file=path, line=number) from exc
    if not isinstance(record, dict):
        what = "expected a JSON object"
        if isinstance(record, list):
            what += ", got a list (JSON lines hold one object per line, not a JSON array)"
        elif record is None:
            what += ", got null"
        raise error(what, file=path, line=number)
    return record


def decoded_lines(
    path: Path, handle: IO[bytes], error: type[SalmonError] = RecordError
) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary handle; bad UTF-8 or a truncated gzip names the line."""
    import zlib

    number = 0
    try:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                what = f"invalid UTF-8 at byte {exc.start} of the line ({exc.reason})"
                raise error(what, file=path, line=number) from exc
    except (EOFError, OSError, zlib.error) as exc:  # gzip: truncated, or not gzip after all
        raise error(f"unreadable after line {number} ({exc})", file=path, line=number + 1) from exc


def read_utf8(path: Path, error: type[SalmonError] = RecordError) -> str:
    """A whole text file; invalid UTF-8 is `error` naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        what = f"invalid UTF-8 at byte {column} of the line ({exc.reason})"
        raise error(what, file=path, line=line) from exc


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; blank lines are skipped; `required` keys are checked per line."""
    path = Path(path)
    required = tuple(required)
    with path.open("rb") as handle:
        for number, line in decoded_lines(path, handle):
            if not line.strip():
                continue
            record = parse_record(path, number, line)
            for key in required:
                if key not in record:
                    raise RecordError(f"field '{key}' missing", file=path, line=number)
            yield record


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """One line per record, written whole (data/atomic.py); the number of records."""
    count = 0
    with atomic_file(path, "w") as handle:
        for record in records:
            handle.write(dumps(record) + "\n")
            count += 1
    return count


def write_json(path: str | Path, value: Any) -> None:
    """`value` as indented JSON, written whole (data/atomic.py)."""
    with atomic_file(path, "w") as handle:
        handle.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


class ResumableOutput:
    """Append-only partial output that survives a kill and is reused only by the same job."""

    def __init__(self, output: str | Path, fingerprint: str, writer: bool = True) -> None:
        self.output = Path(output)
        self.partial = self.output.with_name(self.output.name + ".partial")
        self.stamp = self.output.with_name(self.output.name + ".partial.json")
        self.fingerprint = fingerprint
        self.writer = writer  # only rank 0 of a model-parallel group writes
        self._handle: TextIO | None = None

    def existing(self) -> list[dict[str, Any]]:
        """Complete records from an earlier run of the same job (none if the job changed).

        A partial file stamped by another job (another model, tokenizer or setting: the
        workflow's fingerprint names them) is not reused, and the log says so.
        """
        if not self.partial.exists():
            return []
        try:
            stamp = json.loads(self.stamp.read_text())
        except (OSError, json.JSONDecodeError):
            stamp = {}
        theirs = stamp.get("fingerprint") if isinstance(stamp, dict) else None
        if theirs != self.fingerprint:
            self._log(
                f"{self.partial}: not reused: its stamp names fingerprint {theirs!r}, this "
                f"job is {self.fingerprint!r} (another model, tokenizer or setting)"
            )
            return []
        records = []
        with self.partial.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    self._log(f"{self.partial}: dropped a torn last line (redone)")
                    break  # torn last line of a killed run
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    self._log(f"{self.partial}: dropped an unreadable line and what follows")
                    break
        return records

    def _log(self, message: str) -> None:
        if self.writer:
            print(message, file=sys.stderr, flush=True)

    def start(self, keep: list[dict[str, Any]]) -> None:
        """Rewrite the partial file with exactly `keep`, then append from there."""
        if not self.writer:
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with self.partial.open("w", encoding="utf-8") as handle:
            handle.writelines(dumps(r) + "\n" for r in keep)
        self.stamp.write_text(json.dumps({"fingerprint": self.fingerprint}) + "\n")
        self._handle = self.partial.open("a", encoding="utf-8")

    def append(self, records: list[dict[str, Any]]) -> None:
        if self._handle is None:
            return
        self._handle.write("".join(dumps(r) + "\n" for r in records))
        self._handle.flush()

    def finish(self, order: Callable[[dict[str, Any]], Any] | None = None) -> None:
        """The partial file becomes the output; with `order`, its lines sorted by it.

        Records are appended as they finish (a sampling batch finishes them out of prompt
        order, and a resumed run appends after the kept ones), so the output is written sorted
        (a stable sort of the lines as written): the same bytes whether or not the job resumed.
        """
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        if order is None:
            os.replace(self.partial, self.output)
        else:
            with self.partial.open(encoding="utf-8") as handle:
                lines = handle.readlines()
            lines.sort(key=lambda line: order(json.loads(line)))
            with atomic_file(self.output, "w") as out:
                out.writelines(lines)
            kill_point("shard.rename")
            self.partial.unlink()
        self.stamp.unlink(missing_ok=True)
