"""clean-prompts: SALMON's rule, each filter with exact counts, stable ids, the CLI end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

import salmon_wf
from salmon_wf.cli import main
from salmon_wf.data.oasst import Message, read_messages
from salmon_wf.errors import OasstFormatError
from salmon_wf.stages.clean import PromptFilter, clean_prompts, primary_language

DEMO = Path(salmon_wf.__file__).parent / "resources" / "demo_oasst" / "messages.jsonl"
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oasst1" / "en_100_tree.jsonl"
DEMO_DROPPED = {
    "not_prompter": 0,
    "deleted": 1,
    "review_failed": 1,
    "no_reply": 2,
    "language": 0,
    "too_short": 1,
    "too_long": 0,
    "duplicate": 1,
}


def msg(mid: str, text: str = "", parent: str | None = None, **fields: object) -> Message:
    base = {
        "role": "prompter" if parent is None else "assistant",
        "lang": "en",
        "deleted": False,
        "review_result": True,
        "synthetic": False,
    }
    return Message(
        message_id=mid,
        parent_id=parent,
        text=text or f"Question number {mid}?",
        message_tree_id=None,
        **{**base, **fields},  # type: ignore[arg-type]
    )


def tree(mid: str, text: str = "", replies: int = 1, **fields: object) -> list[Message]:
    """A root and `replies` good assistant replies."""
    return [msg(mid, text, **fields)] + [msg(f"{mid}.{i}", "Answer.", mid) for i in range(replies)]


def demo(**options: object) -> tuple[list[dict], dict]:
    return clean_prompts(read_messages(DEMO), PromptFilter(**options))  # type: ignore[arg-type]


def test_demo_defaults() -> None:
    records, stats = demo()
    assert (stats["n_messages"], stats["n_roots"], stats["n_prompts"]) == (94, 44, 38)
    assert stats["dropped"] == DEMO_DROPPED
    assert len(records) == 38
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    langs = [r["lang"] for r in records]
    assert {x: langs.count(x) for x in set(langs)} == {
        "en": 25,
        "es": 4,
        "de": 3,
        "fr": 3,
        "zh": 2,
        "pt-BR": 1,
    }
    texts = [r["instruction"] for r in records]
    assert texts.count("What is the capital of Australia?") == 1
    assert "Hi?" not in texts and "What is the best way to learn to juggle?" not in texts
    for r in records:
        assert list(r) == ["id", "message_id", "message_tree_id", "lang", "instruction", "input"]
        assert r["id"] == "oasst-" + hashlib.sha1(r["message_id"].encode()).hexdigest()[:16]
        assert r["input"] == "" and r["message_tree_id"] == r["message_id"]


@pytest.mark.parametrize(
    ("options", "n_prompts", "changed"),
    [
        ({"drop_deleted": False}, 40, {"deleted": 0, "no_reply": 1}),
        ({"drop_review_failed": False}, 39, {"review_failed": 0}),
        ({"dedupe": False}, 39, {"duplicate": 0}),
        ({"min_chars": 1}, 39, {"too_short": 0}),
        ({"require_reply": False}, 40, {"no_reply": 0}),
        ({"languages": ("en",)}, 25, {"language": 13}),
        ({"languages": ("EN", "pt")}, 26, {"language": 12}),
        ({"languages": ("de", "fr", "zh")}, 8, {"language": 32, "too_short": 0, "duplicate": 0}),
    ],
)
def test_demo_each_option(options: dict, n_prompts: int, changed: dict) -> None:
    _, stats = demo(**options)
    assert stats["n_prompts"] == n_prompts
    assert stats["dropped"] == {**DEMO_DROPPED, **changed}
    assert stats["n_prompts"] + sum(stats["dropped"].values()) == stats["n_roots"]


def test_salmon_rule_with_filters_off() -> None:
    """SALMON keeps every root prompt that has any reply (the demo's only bare root goes)."""
    off = {"drop_deleted": False, "drop_review_failed": False, "dedupe": False, "min_chars": 0}
    records, stats = demo(**off)
    assert stats["n_prompts"] == 43 and stats["dropped"]["no_reply"] == 1
    assert sum(stats["dropped"].values()) == 1
    assert any(r["instruction"] == "Hi?" for r in records)


def test_length_bounds_and_roles() -> None:
    messages = [
        *tree("a", "abc"),  # 3 chars
        *tree("b", "  abcd \n"),  # 4 once stripped
        *tree("c", "x" * 10),
        *tree("d", "y" * 11),
        *tree("e", "I am an assistant at the root.", role="assistant"),
    ]
    records, stats = clean_prompts(messages, PromptFilter(min_chars=4, max_chars=10))
    assert [r["instruction"] for r in sorted(records, key=lambda r: r["message_id"])] == [
        "abcd",
        "x" * 10,
    ]
    assert stats["dropped"]["too_short"] == 1 and stats["dropped"]["too_long"] == 1
    assert stats["dropped"]["not_prompter"] == 1
    with pytest.raises(ValueError, match="bad length range"):
        PromptFilter(min_chars=5, max_chars=4)


def test_deleted_reply_and_orphans() -> None:
    messages = [
        msg("r1"),
        msg("r1.0", "gone", "r1", deleted=True),
        *tree("r2", replies=3),
        msg("orphan", "My parent is in another split.", "missing-parent"),
        msg("r3"),
        msg("r3.0", "prompter follow-up", "r3", role="prompter"),
    ]
    _, stats = clean_prompts(messages)
    assert stats == {
        "n_messages": 9,
        "n_roots": 3,
        "n_replies": 5,
        "n_prompts": 2,
        "dropped": {**dict.fromkeys(DEMO_DROPPED, 0), "no_reply": 1},
        "messages_dropped": {"orphan": 1, "unreachable": 0},
    }
    _, salmon = clean_prompts(messages, PromptFilter(drop_deleted=False))
    assert salmon["n_prompts"] == 3


def test_duplicates_keep_smallest_id_whatever_the_order() -> None:
    messages = [*tree("first", "Same text"), *tree("second", " Same text\n"), *tree("third")]
    ids = {m: "oasst-" + hashlib.sha1(m.encode()).hexdigest()[:16] for m in ("first", "second")}
    winner = min(ids, key=ids.__getitem__)
    for ordering in (messages, messages[::-1], messages[3:] + messages[:3]):
        records, stats = clean_prompts(ordering)
        assert stats["dropped"]["duplicate"] == 1
        assert [r["message_id"] for r in records if r["instruction"] == "Same text"] == [winner]


def test_ids_do_not_depend_on_order() -> None:
    messages = list(read_messages(DEMO))
    forward, _ = clean_prompts(messages)
    backward, _ = clean_prompts(messages[::-1])
    interleaved, _ = clean_prompts(messages[1::2] + messages[::2])
    assert forward == backward == interleaved


def test_repeated_message_id_is_an_error() -> None:
    first = dataclasses.replace(msg("dup"), source="a.jsonl line 1")
    again = dataclasses.replace(msg("dup"), source="a.jsonl line 9")
    with pytest.raises(OasstFormatError, match=r"a\.jsonl line 9: message_id 'dup' repeats"):
        clean_prompts([first, again])


def test_primary_language() -> None:
    assert [primary_language(x) for x in ("pt-BR", "pt_br", "EN", "zh-Hant-TW", "")] == [
        "pt",
        "pt",
        "en",
        "zh",
        "",
    ]


def test_real_sample_matches_raw_count() -> None:
    if not SAMPLE.exists():
        pytest.skip(f"real OASST1 sample not present: {SAMPLE}")
    expected = set()
    n_messages = 0
    stack = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        root = json.loads(line)["prompt"]
        stack.append(root)
        if not root["deleted"] and any(not r["deleted"] for r in root["replies"]):
            expected.add(root["message_id"])
    while stack:
        node = stack.pop()
        n_messages += 1
        stack.extend(node["replies"])
    records, stats = clean_prompts(read_messages(SAMPLE))
    assert {r["message_id"] for r in records} == expected
    assert len(expected) == stats["n_prompts"] == 100
    assert (stats["n_messages"], stats["n_roots"]) == (n_messages, 100)


def run_cli(tmp_path: Path, *extra: str, input_path: Path = DEMO) -> tuple[int, Path, Path]:
    out, summary = tmp_path / "out" / "prompts.jsonl", tmp_path / "out" / "summary.json"
    code = main(
        [
            "clean-prompts",
            *("--input", str(input_path), "--output", str(out), "--summary", str(summary)),
            *extra,
        ]
    )
    return code, out, summary


def test_cli_end_to_end(tmp_path: Path) -> None:
    code, out, summary_path = run_cli(
        tmp_path, "--languages", "en", "--languages", "de,zh", "--no-dedupe", "--max-chars", "60"
    )
    assert code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["prompts.jsonl", "summary.json"]
    summary = json.loads(summary_path.read_text())
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected, stats = demo(languages=("en", "de", "zh"), dedupe=False, max_chars=60)
    assert records == expected
    assert summary["input"] == str(DEMO) and summary["layout"] == "messages"
    assert {k: summary[k] for k in stats} == stats
    assert summary["dropped"]["language"] == 8 and summary["dropped"]["duplicate"] == 0
    kept = [r for r in demo()[0] if r["lang"] in ("en", "de", "zh")]
    assert summary["dropped"]["too_long"] == sum(len(r["instruction"]) > 60 for r in kept) == 8
    assert "如何提高自己的时间管理能力？" in out.read_text(encoding="utf-8")  # ensure_ascii=False


def test_cli_output_is_byte_identical_across_layouts(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines()]
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]), encoding="utf-8")
    code_a, out_a, _ = run_cli(tmp_path / "a")
    code_b, out_b, summary = run_cli(tmp_path / "b", "--format", "messages", input_path=shuffled)
    assert code_a == code_b == 0
    assert out_a.read_bytes() == out_b.read_bytes()
    assert json.loads(summary.read_text())["layout"] == "messages"


def test_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "data.jsonl"
    lines = DEMO.read_text(encoding="utf-8").splitlines()[:16]
    bad.write_text(
        "\n".join([*lines, '{"message_id": "z", "parent_id": null, "role": "prompter"}'])
    )
    code, out, _ = run_cli(tmp_path, input_path=bad)
    assert code == 1 and not out.exists()
    assert f"{bad} line 17: field 'text' missing" in capsys.readouterr().err
