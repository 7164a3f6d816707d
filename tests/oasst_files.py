"""OASST1 test files: the demo messages and writers for every layout (shared by test modules)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import salmon_wf

DEMO = Path(salmon_wf.__file__).parent / "resources" / "demo_oasst" / "messages.jsonl"


def demo_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]


def nest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Root nodes with "replies", dropping what nested nodes may lack (parent_id, tree id)."""
    nodes = {r["message_id"]: {**r, "replies": []} for r in rows}
    roots = []
    for row in rows:
        node = nodes[row["message_id"]]
        if isinstance(node["emojis"], dict):  # trees layout: {name: count}
            node["emojis"] = dict(zip(*node["emojis"].values(), strict=True))
        node.pop("message_tree_id")
        if row["parent_id"] is None:
            node.pop("parent_id")
            roots.append(node)
        else:
            node.pop("user_id")
            if len(nodes[row["parent_id"]]["replies"]) % 2:  # later siblings omit parent_id
                node.pop("parent_id")
            nodes[row["parent_id"]]["replies"].append(node)
    return roots


def write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_trees(path: Path, rows: list[dict[str, Any]]) -> Path:
    trees = [
        {"message_tree_id": r["message_id"], "tree_state": "ready_for_export", "prompt": r}
        for r in nest(rows)
    ]
    return write_lines(path, trees)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
