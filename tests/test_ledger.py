"""The ledger (results/ledger.json) on the smoke run's input and on OASST1 messages made to hit
every kind of drop: every count closes from stage to stage, and each prompt has one fate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, snakemake, write_config
from oasst_files import write_lines

pytestmark = pytest.mark.slow

RUNS = ("response0", "response1")
FILES = {
    "--prompts": "prompts.jsonl",
    "--prompts-summary": "prompts.summary.json",
    "--pairs": "pairs.jsonl",
    "--judgments": "judgments.jsonl",
    "--judgments-summary": "judgments.summary.json",
    "--preferences": "preferences.jsonl",
    "--stats": "preferences.stats.json",
}

ASK = [
    "Explain how a rainbow forms after the rain.",
    "Write a short poem about the sea at night.",
    "What are three good habits for learning to code?",
    "How do bees make honey from flowers?",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue during the day?",
]


def message(mid: str, parent: str | None, text: str, **fields: Any) -> dict[str, Any]:
    """One OASST1 message (the jsonl export's fields); `fields` override the defaults."""
    record = {
        "message_id": mid,
        "parent_id": parent,
        "user_id": "u",
        "created_date": "2023-03-09T12:00:25+00:00",
        "text": text,
        "role": "prompter" if parent is None else "assistant",
        "lang": "en",
        "review_count": 3,
        "review_result": True,
        "deleted": False,
        "rank": None if parent is None else 0,
        "synthetic": False,
        "model_name": None,
        "detoxify": None,
        "message_tree_id": mid if parent is None else "tree",
        "tree_state": "ready_for_export",
        "emojis": None,
        "labels": None,
    }
    return record | fields


def messages_with_every_drop() -> list[dict[str, Any]]:
    """Kept roots (one too long to sample) with a reply and a second turn, and one root or
    reply for each reason clean-prompts drops it."""
    rows: list[dict[str, Any]] = []

    def tree(name: str, text: str, **fields: Any) -> None:
        rows.append(message(name, None, text, **fields))
        rows.append(message(f"{name}-a", name, "A reply to it."))

    for i, text in enumerate(ASK):
        tree(f"keep-{i}", text)
        rows.append(message(f"keep-{i}-b", f"keep-{i}-a", "A second turn.", role="prompter"))
    tree("long-prompt", "Please summarise this text. " + "The quick brown fox jumps. " * 60)
    tree("deleted", "A deleted question about cats?", deleted=True)
    tree("review", "A question that failed review?", review_result=False)
    tree("french", "Pourquoi le ciel est-il bleu le jour ?", lang="fr")
    tree("duplicate-a", ASK[0] + " ")  # the same stripped text as keep-0
    tree("short", "Hi")
    tree("huge", "x" * 2500)
    tree("assistant-root", "A root written by the assistant.", role="assistant")
    rows.append(message("no-reply", None, "A question nobody answered?"))
    rows.append(message("orphan", "missing-parent", "A reply whose parent is gone."))
    rows.append(message("orphan-child", "orphan", "Its reply."))
    rows.append(message("cycle-a", "cycle-b", "In a loop."))
    rows.append(message("cycle-b", "cycle-a", "In the same loop."))
    return rows


def ledger_of(workdir: Path, **changes: object) -> dict[str, Any]:
    write_config(workdir, **changes)
    snakemake(workdir, "--cores", "2")
    return json.loads((workdir / "results" / "ledger.json").read_text())


def check_closes(ledger: dict[str, Any]) -> None:
    """Every identity holds, and the stage counts chain into each other."""
    assert ledger["ok"] and all(c["ok"] for c in ledger["checks"]), ledger["checks"]
    m, r = ledger["messages"], ledger["roots"]
    assert m["in"] == m["roots"] + m["replies"] + sum(m["dropped"].values())
    assert r["in"] == m["roots"] and r["in"] == r["prompts"] + sum(r["dropped"].values())
    pairing, judging, agg = ledger["pairing"], ledger["judging"], ledger["aggregation"]
    assert pairing["prompts"] == r["prompts"] == pairing["pairs"] + sum(pairing["dropped"].values())
    for run in ledger["sampling"].values():
        assert run["prompts"] == run["responses"] == sum(run["finish_reason"].values())
    assert judging["pairs"] == pairing["pairs"] == judging["judged"] + judging["skipped_too_long"]
    assert judging["judged"] * judging["principles"] == judging["judgments"]
    assert judging["judgments"] == judging["consistent"] + judging["inconsistent"]
    assert agg["pairs"] == agg["pairs_kept"] + sum(agg["pairs_dropped"].values())
    assert agg["candidates"] == agg["pairs_kept"] * agg["passes"]
    assert agg["candidates"] == agg["examples"] + sum(agg["skipped"].values())
    assert agg["examples"] == sum(agg["rule"].values()) == agg["examples_written"]
    assert agg["noise_flips"] == sum(agg["noise_flips_by_decision"].values())
    assert list(ledger["prompts"].values()).count("example") == ledger["prompt_status"].get(
        "example", 0
    )
    assert len(ledger["prompts"]) == r["prompts"]


def test_smoke_run_ledger_closes(tmp_path: Path) -> None:
    ledger = ledger_of(tmp_path)
    check_closes(ledger)
    assert ledger["messages"] == {
        "in": 94,
        "roots": 44,
        "replies": 50,
        "dropped": {"orphan": 0, "unreachable": 0},
    }
    assert ledger["roots"]["prompts"] == 38
    assert ledger["pairing"]["pairs"] + ledger["pairing"]["dropped"]["too_short"] == 38
    skipped = ledger["aggregation"]["skipped"]
    assert skipped["zero_score"] > 0 and skipped["language"] > 0
    assert ledger["judging"]["inconsistent"] > 0 and ledger["aggregation"]["noise_flips"] > 0
    # A count that does not close stops the command with one line and writes nothing.
    results = tmp_path / "results"
    summary = json.loads((results / "pairs.summary.json").read_text())
    summary["dropped"]["too_short"] += 1
    (tmp_path / "pairs.summary.json").write_text(json.dumps(summary))
    argv = [sys.executable, "-m", "salmon_wf.cli", "ledger", "--output", str(tmp_path / "l.json")]
    for flag, name in FILES.items():
        argv += [flag, str(results / name)]
    argv += ["--pairs-summary", str(tmp_path / "pairs.summary.json")]
    argv += ["--responses", *(str(results / "responses" / f"{r}.jsonl") for r in RUNS)]
    argv += ["--principles", str(REPO / "src/salmon_wf/resources/principles.json")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and not (tmp_path / "l.json").exists()
    assert done.stderr.count("\n") == 1
    assert "prompts = pairs + pairs dropped (38 != 39)" in done.stderr


def test_every_kind_of_drop_is_accounted_for(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "oasst.jsonl", messages_with_every_drop())
    ledger = ledger_of(
        tmp_path,
        **{
            "prompts.input": str(source),
            "prompts.languages": ["en"],
            "prompts.max_chars": 2000,
            "sampling.defaults.window": 120,
            "sampling.defaults.max_shared_seq_len": 1000,
            "judge.min_chars": 12,
            "judge.max_length": 394,  # the pairs' judging prompts: 388-399 tokens
            "aggregate.noise": 1.0,
            "aggregate.rule_noise": 1.0,
        },
    )
    check_closes(ledger)
    assert ledger["messages"] == {
        "in": 39,
        "roots": 15,
        "replies": 20,
        "dropped": {"orphan": 2, "unreachable": 2},
    }
    assert ledger["roots"]["prompts"] == 7
    assert ledger["roots"]["dropped"] == {
        "not_prompter": 1,
        "deleted": 1,
        "review_failed": 1,
        "no_reply": 1,
        "language": 1,
        "too_short": 1,
        "too_long": 1,
        "duplicate": 1,
    }
    for run in ledger["sampling"].values():
        assert run["skipped_too_long"] == 1
    long_id = next(k for k, v in ledger["prompts"].items() if v == "pair:skipped_generation")
    assert ledger["pairing"]["dropped"]["skipped_generation"] == 1 and long_id
    assert ledger["pairing"]["dropped"]["too_short"] >= 1
    judging, agg = ledger["judging"], ledger["aggregation"]
    assert judging["skipped_too_long"] == 2 and judging["judged"] == 2
    assert judging["inconsistent"] > 0 and judging["consistent"] > 0
    assert agg["pairs_dropped"]["no_judgments"] == 2
    assert ledger["prompt_status"]["judge:skipped_too_long"] == 2
    assert agg["noise_flips"] == agg["examples"] > 0  # every decision flipped
    assert agg["skipped"]["zero_score"] + agg["skipped"]["language"] > 0
