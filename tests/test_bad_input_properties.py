"""Generated broken records for every reader: a one-line SalmonError or counted drops, never
another exception, never a silent loss (issue 14).

Each property writes what hypothesis draws to a file, runs the reader the way its command does,
and checks: an error is a SalmonError whose line (cli.error_line) is one line naming the file;
a success accounts for every record it was given.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salmon_wf import cli
from salmon_wf.data.principles import load_principles
from salmon_wf.errors import SalmonError
from salmon_wf.stages.gather import gather_judgments, gather_responses

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)
IDS = ["m0", "m1", "m2", "m3", "m4"]


def one_line(command: str, exc: SalmonError, path: Path) -> None:
    line = cli.error_line(command, exc)
    assert "\n" not in line and line.startswith(f"salmon-wf {command}: error: ")
    assert str(path) in line, line  # the file is named


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def encoded(records: list[Any]) -> list[bytes]:
    return [r if isinstance(r, bytes) else json.dumps(r).encode() for r in records]


MESSAGE = st.fixed_dictionaries(
    {"message_id": st.sampled_from(IDS) | JSON},
    optional={
        "parent_id": st.none() | st.sampled_from([*IDS, "gone"]) | JSON,
        "text": st.text(max_size=12) | JSON,
        "role": st.sampled_from(["prompter", "assistant", "bot"]) | JSON,
        "lang": st.sampled_from(["en", "pt-BR"]) | JSON,
        "deleted": st.booleans() | JSON,
        "review_result": st.none() | st.booleans() | JSON,
        "synthetic": st.booleans() | JSON,
        "rank": st.none() | st.integers() | JSON,
    },
)


@SETTINGS
@given(st.lists(MESSAGE | st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=8))
def test_generated_oasst_records(records: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_lines(Path(tmp) / "m.jsonl", encoded(records))
        out = Path(tmp) / "prompts.jsonl"
        argv = ["clean-prompts", "--input", str(path), "--output", str(out)]
        argv += ["--summary", str(Path(tmp) / "s.json"), "--split", "all"]
        try:
            cli.run_command(argv)
        except SalmonError as exc:
            one_line("clean-prompts", exc, path)
            assert not out.exists()  # nothing half-written
            return
        summary = json.loads((Path(tmp) / "s.json").read_text(encoding="utf-8"))
        lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
        assert summary["n_messages"] == len(lines)  # every line is one message
        lost = sum(summary["messages_dropped"].values())
        assert summary["n_messages"] == summary["n_roots"] + summary["n_replies"] + lost
        assert summary["n_roots"] == summary["n_prompts"] + sum(summary["dropped"].values())
        written = out.read_text(encoding="utf-8").splitlines()
        assert len(written) == summary["n_prompts"] > 0


ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dimension": st.sampled_from(["Honest", "Helpful", " "]) | JSON,
        "definition": st.text(max_size=6) | JSON,
        "negative_definition": st.text(max_size=6) | JSON,
    },
)


@SETTINGS
@given(st.lists(ENTRY | JSON, max_size=4) | JSON | st.binary(max_size=16))
def test_generated_principle_files(data: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "principles.json"
        path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
        try:
            principles = load_principles(path)
        except SalmonError as exc:
            one_line("judge", exc, path)
            return
        assert isinstance(data, list) and len(principles) == len(data)  # none dropped
        assert len({p.dimension for p in principles}) == len(principles)


PROMPT_IDS = ["a", "b", "c"]
RESPONSE = st.fixed_dictionaries(
    {"id": st.sampled_from(PROMPT_IDS) | JSON},
    optional={"response": st.text(max_size=6) | JSON},
)


@SETTINGS
@given(st.lists(RESPONSE | st.binary(max_size=10).filter(lambda b: b"\n" not in b), max_size=5))
def test_generated_response_shards(records: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prompts = write_lines(Path(tmp) / "prompts.jsonl", encoded([{"id": i} for i in PROMPT_IDS]))
        shard = write_lines(Path(tmp) / "shard.jsonl", encoded(records))
        try:
            gathered = gather_responses(prompts, [shard])
        except SalmonError as exc:
            line = cli.error_line("gather", exc)
            assert "\n" not in line and (str(shard) in line or str(prompts) in line), line
            return
        assert [r["id"] for r in gathered] == PROMPT_IDS  # every prompt once, none lost
        assert len(gathered) == len(records)


SCORE = st.integers(-5, 5) | st.floats() | JSON
JUDGMENT = st.fixed_dictionaries(
    {"id": st.sampled_from(PROMPT_IDS), "dimension": st.sampled_from(["Honest", "Kind"]) | JSON},
    optional={
        "relative_score": st.lists(SCORE, min_size=0, max_size=3) | JSON,
        "preference": st.sampled_from([0, 1, 2]) | JSON,
    },
)


@SETTINGS
@given(st.lists(JUDGMENT, max_size=5))
def test_generated_judgments(records: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        prompts = write_lines(Path(tmp) / "prompts.jsonl", encoded([{"id": i} for i in PROMPT_IDS]))
        principles = Path(tmp) / "principles.json"
        entry = {"dimension": "Honest", "definition": "x", "negative_definition": "y"}
        principles.write_text(json.dumps([entry]))
        shard = write_lines(Path(tmp) / "shard.jsonl", encoded(records))
        try:
            gathered = gather_judgments(prompts, [shard], principles)
        except SalmonError as exc:
            one_line("gather", exc, shard)
            return
        assert len(gathered) == len(records)  # none dropped silently
        for record in gathered:
            s12, s21 = record["relative_score"]
            expected = 1 if s12 > 0 and s21 > 0 else 2 if s12 < 0 and s21 < 0 else 0
            assert record["preference"] == expected and s12 == s12 and s21 == s21
