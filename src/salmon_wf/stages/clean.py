"""Clean OASST1 into first-turn prompts with stable ids, plus a summary of what was dropped.

SALMON's rule: every root prompter message (parent_id null) that has a reply becomes a prompt
(the original follows the first child at each level and keeps chains of >= 2 messages; "has a
reply" is the same test). On top, each optional filter below drops roots; with them all off
(require_reply stays on) the result is SALMON's set. A root is counted under the first rule that
drops it, in this order: not_prompter, deleted, review_failed, no_reply, language, too_short,
too_long, duplicate.

Replies no root reaches are counted too (`messages_dropped`): `orphan` when an ancestor is
missing (in another split, say), `unreachable` when the parent links loop (a cycle), so
n_messages = n_roots + n_replies + orphan + unreachable. A run that keeps no prompt at all is
an error, naming the input and every count, and writes nothing.

A prompt's id is "oasst-" + the first 16 hex digits of sha1(message_id): it depends on the message
alone, never on file order or layout. Texts are stripped; lengths and duplicates use the stripped
text; among duplicates the one with the smallest id is kept. Records are sorted by id, so every
layout of the same messages gives byte-identical output.

Only the train split is read by default (as SALMON, which loads oasst1["train"]), when the
input tells its split (HF parquet files by name); the summary's "split" says what was read and
says so when the input (a jsonl export, which mixes both splits) cannot be split.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from salmon_wf.config import add_list_option, command_defaults
from salmon_wf.data.jsonl import write_json, write_jsonl
from salmon_wf.data.oasst import (
    LAYOUTS,
    SPLITS,
    Message,
    SplitChoice,
    choose_split,
    detect_layout,
    read_messages,
)
from salmon_wf.errors import ConfigError, OasstFormatError

DROP_REASONS = (
    "not_prompter",
    "deleted",
    "review_failed",
    "no_reply",
    "language",
    "too_short",
    "too_long",
    "duplicate",
)


_PROMPTS = command_defaults("clean-prompts")


@dataclass(frozen=True)
class PromptFilter:
    """Filter options; the defaults are the config schema's prompts section (min_chars 4 drops
    "Hi", max 4096 keeps all). require_reply is SALMON's own rule: no config key turns it off."""

    drop_deleted: bool = _PROMPTS["drop_deleted"]
    drop_review_failed: bool = _PROMPTS["drop_review_failed"]
    languages: tuple[str, ...] = tuple(_PROMPTS["languages"])  # primary subtags; () = all
    dedupe: bool = _PROMPTS["dedupe"]
    min_chars: int = _PROMPTS["min_chars"]
    max_chars: int = _PROMPTS["max_chars"]
    require_reply: bool = True

    def __post_init__(self) -> None:
        if self.min_chars < 0 or self.max_chars < max(self.min_chars, 1):
            raise ConfigError(
                f"bad length range: min {self.min_chars}, max {self.max_chars}",
                field="--min-chars/--max-chars",
            )


def primary_language(lang: str) -> str:
    """Primary subtag, lower case: "pt-BR" and "pt_br" -> "pt"."""
    return lang.replace("_", "-").split("-", 1)[0].strip().lower()


def prompt_id(message_id: str) -> str:
    return "oasst-" + hashlib.sha1(message_id.encode("utf-8")).hexdigest()[:16]


def _drop_reason(root: Message, replies: int, options: PromptFilter) -> str | None:
    text = root.text.strip()
    allowed = {primary_language(lang) for lang in options.languages}
    checks = (
        ("not_prompter", root.role != "prompter"),
        ("deleted", options.drop_deleted and root.deleted),
        ("review_failed", options.drop_review_failed and root.review_result is False),
        ("no_reply", options.require_reply and replies == 0),
        ("language", bool(allowed) and primary_language(root.lang) not in allowed),
        ("too_short", len(text) < options.min_chars),
        ("too_long", len(text) > options.max_chars),
    )
    return next((reason for reason, failed in checks if failed), None)


MESSAGE_DROPS = ("orphan", "unreachable")


def unreached(parents: dict[str, str], roots: set[str]) -> dict[str, str]:
    """Each reply no root reaches: "orphan" (an ancestor is missing) or "unreachable" (a cycle).

    `parents` maps every non-root message id to its parent id.
    """
    verdicts: dict[str, str] = {}  # "reply" for a reply a root reaches
    for start in parents:
        trail: list[str] = []
        on_trail: set[str] = set()
        node = start
        while node not in verdicts:
            if node in roots:
                verdict = "reply"
                break
            if node not in parents:
                verdict = "orphan"
                break
            if node in on_trail:
                verdict = "unreachable"
                break
            on_trail.add(node)
            trail.append(node)
            node = parents[node]
        else:
            verdict = verdicts[node]
        verdicts.update(dict.fromkeys(trail, verdict))
    return {k: v for k, v in verdicts.items() if v != "reply"}


def clean_prompts(
    messages: Iterable[Message], options: PromptFilter | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Prompt records sorted by id, and counts: n_messages, n_roots, n_replies, n_prompts,
    dropped (roots, by reason) and messages_dropped (replies no root reaches)."""
    options = options or PromptFilter()
    seen: dict[str, str] = {}
    roots: list[Message] = []
    parents: dict[str, str] = {}
    replies: Counter[str] = Counter()
    for message in messages:
        if message.message_id in seen:
            raise OasstFormatError(
                f"{message.source}: message_id {message.message_id!r} repeats "
                f"(first at {seen[message.message_id]})"
            )
        seen[message.message_id] = message.source
        if message.parent_id is None:
            roots.append(message)
            continue
        parents[message.message_id] = message.parent_id
        if not (options.drop_deleted and message.deleted):
            replies[message.parent_id] += 1
    dropped = dict.fromkeys(DROP_REASONS, 0)
    records: list[dict[str, Any]] = []
    texts: set[str] = set()
    for root in sorted(roots, key=lambda m: (prompt_id(m.message_id), m.message_id)):
        reason = _drop_reason(root, replies[root.message_id], options)
        text = root.text.strip()
        if reason is None and options.dedupe and text in texts:
            reason = "duplicate"
        if reason is not None:
            dropped[reason] += 1
            continue
        texts.add(text)
        records.append(
            {
                "id": prompt_id(root.message_id),
                "message_id": root.message_id,
                "message_tree_id": root.message_tree_id,
                "lang": root.lang,
                "instruction": text,
                "input": "",
            }
        )
    lost = Counter(unreached(parents, {r.message_id for r in roots}).values())
    stats = {
        "n_messages": len(seen),
        "n_roots": len(roots),
        "n_replies": len(parents) - lost.total(),
        "n_prompts": len(records),
        "dropped": dropped,
        "messages_dropped": {reason: lost[reason] for reason in MESSAGE_DROPS},
    }
    return records, stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = PromptFilter()
    toggle = argparse.BooleanOptionalAction
    parser.add_argument("--input", required=True, type=Path, help="OASST1 file or parquet folder")
    parser.add_argument("--output", required=True, type=Path, help="prompts.jsonl to write")
    parser.add_argument("--summary", type=Path, help="JSON summary to write (counts, drops)")
    parser.add_argument("--format", choices=("auto", *LAYOUTS), default=_PROMPTS["format"])
    parser.add_argument(
        "--split",
        choices=(*SPLITS, "all"),
        default=_PROMPTS["split"],
        help="OASST1 split to read, told by file name (SALMON: train)",
    )
    parser.add_argument("--drop-deleted", action=toggle, default=defaults.drop_deleted)
    parser.add_argument("--drop-review-failed", action=toggle, default=defaults.drop_review_failed)
    add_list_option(
        parser,
        "languages",
        list(defaults.languages),
        "allowed primary language subtag (repeatable or comma separated); default all",
    )
    parser.add_argument("--dedupe", action=toggle, default=defaults.dedupe)
    parser.add_argument(
        "--min-chars", type=int, default=defaults.min_chars, help="shortest prompt kept (stripped)"
    )
    parser.add_argument(
        "--max-chars", type=int, default=defaults.max_chars, help="longest prompt kept (stripped)"
    )
    parser.add_argument("--require-reply", action=toggle, default=defaults.require_reply)


def options_from_args(args: argparse.Namespace) -> PromptFilter:
    languages = [x.strip() for item in args.languages or () for x in item.split(",") if x.strip()]
    return PromptFilter(
        drop_deleted=args.drop_deleted,
        drop_review_failed=args.drop_review_failed,
        languages=tuple(languages),
        dedupe=args.dedupe,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        require_reply=args.require_reply,
    )


def read_input(args: argparse.Namespace) -> tuple[str, SplitChoice, Iterator[Message]]:
    """The OASST1 input --input, --format and --split name: its layout, the split chosen and
    its messages (read lazily). clean-prompts and calibrate pairs read the same input so."""
    layout = detect_layout(args.input) if args.format == "auto" else args.format
    split = choose_split(args.input, layout, args.split)
    return layout, split, read_messages(args.input, layout, args.split)


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    layout, split, messages = read_input(args)
    records, stats = clean_prompts(messages, options)
    summary = {"input": str(args.input), "layout": layout, "split": split.summary(), **stats}
    summary["options"] = asdict(options)
    if not records:
        raise OasstFormatError(f"no prompts left ({counts_line(stats)})", file=args.input)
    if split.note:
        print(f"clean-prompts: split {args.split}: {split.note}", file=sys.stderr)
    write_jsonl(args.output, records)
    if args.summary is not None:
        write_json(args.summary, summary)
    print(f"{stats['n_prompts']} prompts from {counts_line(stats)} (layout {layout})")
    return 0


def counts_line(stats: dict[str, Any]) -> str:
    """ "N roots (M messages); dropped: ...; replies no root reaches: ..." for the log."""
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items() if v)
    lost = ", ".join(f"{k} {v}" for k, v in stats["messages_dropped"].items() if v)
    return (
        f"{stats['n_roots']} roots ({stats['n_messages']} messages); dropped: "
        f"{dropped or 'none'}; replies no root reaches: {lost or 'none'}"
    )
