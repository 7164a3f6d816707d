"""Offline readers for the three published OASST1 layouts, normalised to one flat message stream.

Layouts: "parquet" (an HF split, a file or a folder of files) and "messages" (jsonl, one flat
message per line) are the flat layout; "trees" is one tree per line
({"message_tree_id", "tree_state", "prompt": node}); "nested" is one message per line with its
"replies" nested. Every reader yields `Message`s, so later stages never care where data came from.
Gzip is detected from the file's magic bytes, not its name. Malformed input raises
`OasstFormatError` naming the file, the line (or parquet row) and the field.

Splits: the HF dataset holds `train` and `validation` parquet files (SALMON reads train only).
A file's split is told by its name (train-00000-of-00001-....parquet) or a folder's name
(train/...); the flat and tree jsonl exports hold both splits mixed and cannot be split.
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from salmon_wf.data.jsonl import decoded_lines, parse_record
from salmon_wf.errors import ConfigError, OasstFormatError

LAYOUTS = ("parquet", "messages", "nested", "trees")
SPLITS = ("train", "validation")
ROLES = ("prompter", "assistant")
FLAGS = ("deleted", "review_result", "synthetic")  # the boolean fields (pandas: 1.0/0.0/NaN)
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Message:
    """One OASST1 message with the fields the pipeline uses; `source` locates it for errors."""

    message_id: str
    parent_id: str | None
    text: str
    role: str
    lang: str
    deleted: bool
    review_result: bool | None
    message_tree_id: str | None
    synthetic: bool
    rank: int | None = None
    source: str = field(default="", compare=False)


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _open_binary(path: Path) -> IO[bytes]:
    """Binary handle on a plain or gzip file (gzip found by content, so any name works)."""
    if _is_gzip(path):
        return gzip.open(path, "rb")
    return path.open("rb")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line; invalid UTF-8 or a truncated gzip names file and line."""
    with _open_binary(path) as handle:
        yield from decoded_lines(path, handle, OasstFormatError)


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise OasstFormatError(f"{path}: folder holds no *.parquet files")
        return files
    return [path]


def split_of(path: Path, root: Path | None = None) -> str | None:
    """The split a file's name (or a folder's under `root`) names, or None."""
    parts = path.relative_to(root).parts if root is not None and root != path else (path.name,)
    for part in reversed(parts):
        words = set(re.split(r"[-_.]", part.lower()))
        named = [s for s in SPLITS if s in words]
        if len(named) == 1:
            return named[0]
    return None


@dataclass(frozen=True)
class SplitChoice:
    """What a split request selected: the files read and whether the split could be told."""

    requested: str
    files: tuple[Path, ...]
    told: bool  # False: the input's split cannot be told from it, so every message is read
    note: str = ""

    def summary(self) -> dict[str, Any]:
        files = [str(f) for f in self.files]
        return {"requested": self.requested, "told": self.told, "files": files, "note": self.note}


def choose_split(path: str | Path, layout: str, split: str = "all") -> SplitChoice:
    """The files of `split` ("all": every file) in an OASST1 input of `layout`."""
    path = Path(path)
    if split not in ("all", *SPLITS):
        raise ConfigError(
            f"unknown split {split!r}; expected all or one of {SPLITS}", field="--split"
        )
    if layout != "parquet":
        note = (
            ""
            if split == "all"
            else (
                f"{layout} jsonl exports mix the train and validation splits; the split cannot be "
                "told from the file, so every message was read"
            )
        )
        return SplitChoice(split, (path,), told=split == "all", note=note)
    files = _parquet_files(path)
    if split == "all":
        return SplitChoice(split, tuple(files), told=True)
    root = path if path.is_dir() else None
    named = {f: split_of(f, root) for f in files}
    if all(s is None for s in named.values()):
        note = f"no file name tells its split; every file was read ({len(files)})"
        return SplitChoice(split, tuple(files), told=False, note=note)
    chosen = tuple(f for f in files if named[f] == split)
    if not chosen:
        found = ", ".join(f"{f.name} ({named[f] or 'unknown'})" for f in files)
        raise OasstFormatError(f"{path}: no parquet file of split {split!r} (files: {found})")
    return SplitChoice(split, chosen, told=True)


def _first_record(path: Path) -> tuple[int, Any] | None:
    for number, line in _lines(path):
        if line.strip():
            return number, _parse_line(path, number, line)
    return None


def detect_layout(path: str | Path) -> str:
    """Layout of `path` from its kind (folder, parquet magic) and, for jsonl, its first record."""
    path = Path(path)
    if not path.exists():
        raise OasstFormatError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix == ".parquet":
        return "parquet"
    with path.open("rb") as handle:
        if handle.read(4) == _PARQUET_MAGIC:
            return "parquet"
    first = _first_record(path)
    if first is None:
        raise OasstFormatError(f"{path}: empty file, no records")
    number, record = first
    if "prompt" in record:
        return "trees"
    if "message_id" not in record:
        raise OasstFormatError(
            f"{path} line {number}: cannot detect layout: no field 'prompt' (trees) "
            "or 'message_id' (messages)"
        )
    return "nested" if "replies" in record else "messages"


def _parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    return parse_record(path, number, line, OasstFormatError)


def _optional(record: dict[str, Any], key: str, kinds: tuple[type, ...], where: str) -> Any:
    value = record.get(key)
    if value is not None and not isinstance(value, kinds):
        raise OasstFormatError(f"{where}: field '{key}' must be {kinds[0].__name__}")
    return value


def _required_str(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record or record[key] is None:
        raise OasstFormatError(f"{where}: field '{key}' missing")
    value = record[key]
    if not isinstance(value, str):
        raise OasstFormatError(f"{where}: field '{key}' must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape of half a surrogate pair
        raise OasstFormatError(
            f"{where}: field '{key}' holds a lone surrogate at character {exc.start}"
        ) from exc
    return value


def _rank(record: dict[str, Any], where: str) -> int | None:
    """A reply's rank: an integer, or null (pandas writes it as float, NaN for null)."""
    rank = record.get("rank")
    if rank is None or (isinstance(rank, float) and math.isnan(rank)):
        return None
    number = isinstance(rank, int | float) and not isinstance(rank, bool)
    if not number or not math.isfinite(rank) or rank != int(rank):
        raise OasstFormatError(f"{where}: field 'rank' must be an integer or null, got {rank!r}")
    return int(rank)


def to_message(
    record: dict[str, Any],
    where: str,
    parent_id: str | None = None,
    tree_id: str | None = None,
    flat: bool = True,
) -> Message:
    """Validate one raw message. Flat rows must state parent_id; nested nodes inherit it."""
    message_id = _required_str(record, "message_id", where)
    if not message_id:
        raise OasstFormatError(f"{where}: field 'message_id' is empty")
    text = _required_str(record, "text", where)
    role = _required_str(record, "role", where)
    if role not in ROLES:
        raise OasstFormatError(f"{where}: field 'role' is {role!r}, not one of {ROLES}")
    if flat and "parent_id" not in record:
        raise OasstFormatError(f"{where}: field 'parent_id' missing (null marks a root)")
    own_parent = _optional(record, "parent_id", (str,), where)
    if not flat:
        if own_parent is not None and parent_id is not None and own_parent != parent_id:
            raise OasstFormatError(
                f"{where}: field 'parent_id' is {own_parent!r} but the message is nested "
                f"under {parent_id!r}"
            )
        own_parent = parent_id if parent_id is not None else own_parent
    tree = _optional(record, "message_tree_id", (str,), where) or tree_id
    return Message(
        message_id=message_id,
        parent_id=own_parent,
        text=text,
        role=role,
        lang=_optional(record, "lang", (str,), where) or "",
        deleted=bool(_optional(record, "deleted", (bool,), where)),
        review_result=_optional(record, "review_result", (bool,), where),
        message_tree_id=tree or (message_id if own_parent is None else None),
        synthetic=bool(_optional(record, "synthetic", (bool,), where)),
        rank=_rank(record, where),
        source=where,
    )


def _flatten(
    node: Any, where: str, trail: str, parent_id: str | None, tree_id: str | None
) -> Iterator[Message]:
    """A nested node and all its replies, depth first; each error names the node's trail."""
    here = f"{where} ({trail})" if trail else where
    if not isinstance(node, dict):
        raise OasstFormatError(f"{here}: expected a message object")
    message = to_message(node, here, parent_id, tree_id, flat=False)
    yield message
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise OasstFormatError(f"{here}: field 'replies' must be a list")
    for i, reply in enumerate(replies):
        child = f"{trail}.replies[{i}]" if trail else f"replies[{i}]"
        yield from _flatten(reply, where, child, message.message_id, message.message_tree_id)


def _read_jsonl(path: Path, layout: str) -> Iterator[Message]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        record = _parse_line(path, number, line)
        where = f"{path} line {number}"
        if layout == "trees":
            if not isinstance(record.get("prompt"), dict):
                raise OasstFormatError(f"{where}: field 'prompt' missing or not an object")
            tree_id = _optional(record, "message_tree_id", (str,), where)
            yield from _flatten(record["prompt"], where, "prompt", None, tree_id)
        elif "replies" in record:
            yield from _flatten(record, where, "", None, None)
        else:
            yield to_message(record, where)


def _pandas_flags(record: dict[str, Any]) -> dict[str, Any]:
    """A row whose boolean columns pandas stored as float (1.0, 0.0, NaN for null) as bools.

    Any other float stays, for to_message to refuse.
    """
    for key in FLAGS:
        value = record.get(key)
        if isinstance(value, float):
            if math.isnan(value):
                record[key] = None
            elif value in (0.0, 1.0):
                record[key] = value == 1.0
    return record


def _read_parquet(files: list[Path]) -> Iterator[Message]:
    import pyarrow.parquet as pq  # only parquet input pays for the import

    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise OasstFormatError(f"{file}: not a readable parquet file ({exc})") from exc
        row = 0
        batches = parquet.iter_batches(batch_size=4096)
        while True:
            try:
                batch = next(batches, None)
            except Exception as exc:  # a truncated or corrupt row group
                raise OasstFormatError(
                    f"{file} row {row}: unreadable parquet data ({exc})"
                ) from exc
            if batch is None:
                break
            for record in batch.to_pylist():
                yield to_message(_pandas_flags(record), f"{file} row {row}")
                row += 1


def read_messages(path: str | Path, layout: str = "auto", split: str = "all") -> Iterator[Message]:
    """Every message of an OASST1 file or folder (of `split`), flat, in file order."""
    path = Path(path)
    if layout == "auto":
        layout = detect_layout(path)
    if layout not in LAYOUTS:
        raise ConfigError(
            f"unknown OASST1 layout {layout!r}; expected auto or one of {LAYOUTS}", field="--format"
        )
    if not path.exists():
        raise OasstFormatError(f"{path}: no such file or folder")
    if layout == "parquet":
        return _read_parquet(list(choose_split(path, layout, split).files))
    if path.is_dir():
        raise OasstFormatError(f"{path}: a folder is only read as parquet")
    return _read_jsonl(path, layout)
