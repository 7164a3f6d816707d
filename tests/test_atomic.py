"""The one writer (data/atomic.py): whole files, the user's umask, nothing left on failure; and
every CPU stage's outputs through it (sample and judge are in the smoke run, test_workflow)."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from salmon_wf import cli
from salmon_wf.data import atomic
from salmon_wf.data.atomic import atomic_file
from salmon_wf.data.jsonl import read_jsonl, write_json, write_jsonl

REPO = Path(__file__).resolve().parent.parent
DEMO_OASST = REPO / "src" / "salmon_wf" / "resources" / "demo_oasst" / "messages.jsonl"
PRINCIPLES = REPO / "src" / "salmon_wf" / "resources" / "principles.json"


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Runs the test under this umask; yields the mode a new file then gets."""
    old = os.umask(request.param)
    try:
        yield 0o666 & ~request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_decides_the_mode_not_mkstemp(tmp_path: Path, umask: int) -> None:
    assert umask in (0o644, 0o640)
    with atomic_file(tmp_path / "a.bin") as handle:
        handle.write(b"\x00\x01")
    with atomic_file(tmp_path / "deeper" / "b.txt", "w") as handle:  # parents are made
        handle.write("é\n")
    write_json(tmp_path / "c.json", {"k": [1, "ü"]})
    assert write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, {"a": 2}]) == 2
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "deeper" / "b.txt").read_bytes() == "é\n".encode()
    assert (tmp_path / "c.json").read_text("utf-8") == '{\n  "k": [\n    1,\n    "ü"\n  ]\n}\n'
    assert list(read_jsonl(tmp_path / "d.jsonl")) == [{"a": 1}, {"a": 2}]
    files = [tmp_path / "a.bin", tmp_path / "deeper" / "b.txt", tmp_path / "c.json"]
    assert [mode(p) for p in [*files, tmp_path / "d.jsonl"]] == [umask] * 4
    # Replacing a file keeps no trace of the old one's mode: the new file's is the umask's.
    (tmp_path / "c.json").chmod(0o600)
    write_json(tmp_path / "c.json", 1)
    assert mode(tmp_path / "c.json") == umask


def test_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="killed"), atomic_file(target) as handle:
        handle.write(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary

    target.write_text("old\n")

    def records() -> Iterator[dict[str, int]]:
        yield {"a": 1}
        raise KeyboardInterrupt  # a BaseException (Ctrl-C) cleans up too

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(target, records())
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_no_file_until_the_block_ends_then_renamed_in_place(tmp_path: Path) -> None:
    target = tmp_path / "prefs.json"
    with atomic_file(target) as handle:
        handle.write(b"[]\n")
        handle.flush()
        (temporary,) = tmp_path.iterdir()
        assert not target.exists()
        assert temporary.name.startswith(".prefs.json.") and temporary.name.endswith(".tmp")
        assert temporary.read_bytes() == b"[]\n"
    assert [p.name for p in tmp_path.iterdir()] == ["prefs.json"]


def test_a_thread_streams_into_the_handle(tmp_path: Path) -> None:
    """The aggregation's writer thread writes while the block runs on the main thread."""
    target = tmp_path / "big.bin"
    with atomic_file(target) as handle:
        thread = threading.Thread(target=lambda: [handle.write(b"x" * 1000) for _ in range(500)])
        thread.start()
        thread.join()
    assert target.read_bytes() == b"x" * 500_000


def test_temporary_names_do_not_clash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """O_EXCL: a name already taken (another writer's temporary) is skipped, never reused."""
    target = tmp_path / "t.json"
    taken = tmp_path / ".t.json.taken.tmp"
    taken.write_text("another writer's")
    names = iter([taken, tmp_path / ".t.json.free.tmp"])
    monkeypatch.setattr(atomic, "temporary_name", lambda path: next(names))
    with atomic_file(target, "w") as handle:
        handle.write("mine")
    assert target.read_text() == "mine" and taken.read_text() == "another writer's"
    with pytest.raises(ValueError, match="mode 'wb' or 'w'"):
        atomic_file(target, "a")  # type: ignore[call-overload]


def test_every_cpu_stage_writes_files_with_the_umask_mode(tmp_path: Path, umask: int) -> None:
    """clean-prompts -> gather (responses) -> pair -> gather (judgments) -> aggregate."""
    out = tmp_path / "results"
    prompts = out / "prompts.jsonl"
    run = ["clean-prompts", "--input", str(DEMO_OASST), "--output", str(prompts)]
    assert cli.run_command([*run, "--summary", str(out / "prompts.summary.json")]) == 0
    ids = [p["id"] for p in read_jsonl(prompts)]
    assert len(ids) > 5
    responses = []
    for run_name in ("response0", "response1"):
        shard = tmp_path / f"{run_name}-shard.jsonl"
        records = [
            {
                "id": i,
                "instruction": f"Question {i}?",
                "input": "",
                "generation": f"{run_name} answers {i} at some length.",
                "response": f"{run_name} answers {i} at some length.",
                "finish_reason": "stop",
            }
            for i in ids
        ]
        write_jsonl(shard, records)
        gathered = out / "responses" / f"{run_name}.jsonl"
        argv = ["gather", "--prompts", str(prompts), "--shards", str(shard)]
        assert cli.run_command([*argv, "--output", str(gathered)]) == 0
        responses.append(str(gathered))
    pairs, pair_summary = out / "pairs.jsonl", out / "pairs.summary.json"
    argv = ["pair", "--responses", *responses, "--output", str(pairs)]
    assert cli.run_command([*argv, "--summary", str(pair_summary)]) == 0
    dims = [p["dimension"] for p in json.loads(PRINCIPLES.read_text())]
    shard, shard_summary = tmp_path / "judge-shard.jsonl", tmp_path / "judge-shard.summary.json"
    scored = [
        {"id": i, "dimension": d, "relative_score": [1.0 + n, 0.5], "preference": 1}
        for i in ids
        for n, d in enumerate(dims)
    ]
    write_jsonl(shard, scored)
    write_json(shard_summary, {"pairs_judged": len(ids), "skipped_ids": []})
    judgments = out / "judgments.jsonl"
    argv = ["gather", "--prompts", str(prompts), "--principles", str(PRINCIPLES)]
    argv += ["--shards", str(shard), "--output", str(judgments)]
    argv += ["--summaries", str(shard_summary), "--summary", str(out / "judgments.summary.json")]
    assert cli.run_command(argv) == 0
    argv = ["aggregate", "--pairs", str(pairs), "--pairs-summary", str(pair_summary)]
    argv += ["--judgments", str(judgments), "--principles", str(PRINCIPLES)]
    argv += ["--output", str(out / "preferences.json")]
    argv += ["--output-jsonl", str(out / "preferences.jsonl")]
    argv += ["--stats", str(out / "preferences.stats.json"), "--workers", "1"]
    assert cli.run_command(argv) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "judgments.jsonl",
        "judgments.summary.json",
        "pairs.jsonl",
        "pairs.summary.json",
        "preferences.json",
        "preferences.jsonl",
        "preferences.stats.json",
        "prompts.jsonl",
        "prompts.summary.json",
        "responses/response0.jsonl",
        "responses/response1.jsonl",
    ]
    assert {name: mode(out / name) for name in written} == {name: umask for name in written}
    assert len(json.loads((out / "preferences.json").read_text())) > 0
