"""Calibration pairs: sibling assistant replies with different human ranks, in pairs.jsonl form.

OASST1 ranks the assistant replies to one prompter message (`rank` 0 = the best). Two ranked
siblings with different ranks make one pair whose human-better reply is known, so the judge can
be scored against people. The pairs are written in the pair stage's format (id, instruction,
input, output_1, output_2), so the judge stage reads them as it reads sampled pairs, plus the
fields the summary needs: the better output (1 or 2), both ranks, the prompt's language.

Choice, deterministic and independent of file order or layout: every candidate pair gets a key,
sha256 of (seed, both message ids); a prompt keeps its `pairs_per_prompt` candidates of smallest
key (0 = all), then the `max_pairs` of smallest key overall are written, sorted by pair id. A
second hash bit of the same inputs says whether the better reply is output_1 or output_2, so
the human-better reply is not always in one position.

A reply counts when it is an assistant message, not deleted, has a rank and a non-empty text.
The trees are those of the root prompts clean-prompts keeps (the prompts section's filters:
deleted, review, language, length, duplicates), so the calibration speaks for the prompts the
workflow judges. First-turn pairs answer a root prompt; with first_turn_only off, a reply
deeper in a kept tree is judged with the conversation up to its parent as the instruction
("User: ..." / "Assistant: ..." turns). Everything left out is counted under its reason.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from salmon_wf.data.oasst import Message
from salmon_wf.stages.clean import PromptFilter, clean_prompts

ROLE_LABELS = {"prompter": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Selection:
    """What chooses the pairs (the calibrate section of the config)."""

    seed: int = 0
    first_turn_only: bool = True
    pairs_per_prompt: int = 1  # 0: every candidate of a prompt
    max_pairs: int = 500


def pair_key(seed: int, first: str, second: str) -> str:
    """The choice key of a pair of message ids (in sorted order): sha256 hex."""
    return hashlib.sha256(f"{seed}\0{first}\0{second}".encode()).hexdigest()


def pair_id(first: str, second: str) -> str:
    return "cal-" + hashlib.sha1(f"{first}\0{second}".encode()).hexdigest()[:16]


def better_first(seed: int, first: str, second: str) -> bool:
    """Whether the better reply is shown as output_1 (one hash bit, seeded)."""
    digest = hashlib.sha256(f"{seed}\0order\0{first}\0{second}".encode()).digest()
    return digest[0] & 1 == 0


def thread(message: Message, by_id: dict[str, Message]) -> list[Message] | None:
    """The messages from the root down to `message`, or None when an ancestor is missing."""
    chain = [message]
    seen = {message.message_id}
    while chain[-1].parent_id is not None:
        parent = by_id.get(chain[-1].parent_id)
        if parent is None or parent.message_id in seen:  # missing, or a cycle
            return None
        seen.add(parent.message_id)
        chain.append(parent)
    return chain[::-1]


def instruction_of(chain: list[Message]) -> str:
    """A root prompt's text; for a deeper prompter message, the conversation up to it."""
    if len(chain) == 1:
        return chain[0].text.strip()
    return "\n\n".join(f"{ROLE_LABELS[m.role]}: {m.text.strip()}" for m in chain)


def reply_reason(reply: Message) -> str | None:
    """Why a reply cannot be one side of a calibration pair, or None."""
    if reply.role != "assistant":
        return "not_assistant"
    if reply.deleted:
        return "deleted"
    if reply.rank is None:
        return "unranked"
    if not reply.text.strip():
        return "empty"
    return None


def select_pairs(
    messages: Iterable[Message], selection: Selection, prompts: PromptFilter | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Calibration pair records sorted by id, and the counts of what was kept and left out."""
    every = list(messages)
    kept_roots, _ = clean_prompts(every, prompts)  # a repeated message_id is an error there
    roots = {r["message_id"] for r in kept_roots}
    by_id: dict[str, Message] = {}
    children: dict[str, list[Message]] = defaultdict(list)
    for message in every:
        by_id[message.message_id] = message
        if message.parent_id is not None:
            children[message.parent_id].append(message)
    replies: Counter[str] = Counter()  # reply reasons ("ranked" for a usable one)
    parents: Counter[str] = Counter()  # prompter messages with replies, by what became of them
    ties = 0
    candidates: list[tuple[str, dict[str, Any]]] = []
    per_prompt_cut = 0
    for parent_id in sorted(children):
        parent = by_id.get(parent_id)
        if parent is None:
            parents["orphan"] += 1
            continue
        if parent.role != "prompter":
            continue  # replies to an assistant message are prompter turns
        if parent.deleted:
            parents["deleted"] += 1
            continue
        if selection.first_turn_only and parent.parent_id is not None:
            parents["not_first_turn"] += 1
            continue
        chain = thread(parent, by_id)
        if chain is None:
            parents["orphan"] += 1
            continue
        if chain[0].message_id not in roots:
            parents["prompt_dropped"] += 1  # its root is not a prompt clean-prompts keeps
            continue
        usable = []
        for reply in children[parent_id]:
            reason = reply_reason(reply)
            if reason != "not_assistant":
                replies[reason or "ranked"] += 1
            if reason is None:
                usable.append(reply)
        usable.sort(key=lambda m: m.message_id)
        found = []
        for a, b in combinations(usable, 2):
            if a.rank == b.rank:
                ties += 1
                continue
            found.append((pair_key(selection.seed, a.message_id, b.message_id), a, b))
        if not found:
            parents["no_ranked_pair"] += 1
            continue
        parents["with_pairs"] += 1
        found.sort(key=lambda item: item[0])
        if selection.pairs_per_prompt:
            per_prompt_cut += max(0, len(found) - selection.pairs_per_prompt)
            found = found[: selection.pairs_per_prompt]
        instruction = instruction_of(chain)
        for key, a, b in found:
            candidates.append((key, pair_record(selection.seed, parent, chain, instruction, a, b)))
    candidates.sort(key=lambda item: item[0])
    chosen = [record for _, record in candidates[: selection.max_pairs]]
    chosen.sort(key=lambda record: record["id"])
    counts = {
        "n_messages": len(by_id),
        "pairs": len(chosen),
        "prompts": len({r["parent_id"] for r in chosen}),
        "parents": {k: parents[k] for k in PARENT_OUTCOMES},
        "replies": {k: replies[k] for k in REPLY_OUTCOMES},
        "candidate_pairs": len(candidates) + per_prompt_cut,
        "tied_pairs": ties,
        "dropped": {
            "per_prompt_cap": per_prompt_cut,
            "max_pairs_cap": max(0, len(candidates) - selection.max_pairs),
        },
        "languages": dict(Counter(r["lang"] for r in chosen).most_common()),
        "better_is_output_1": sum(r["better"] == 1 for r in chosen),
    }
    return chosen, counts


PARENT_OUTCOMES = (
    "with_pairs",
    "no_ranked_pair",
    "not_first_turn",
    "prompt_dropped",
    "deleted",
    "orphan",
)
REPLY_OUTCOMES = ("ranked", "unranked", "deleted", "empty")


def pair_record(
    seed: int,
    parent: Message,
    chain: list[Message],
    instruction: str,
    a: Message,
    b: Message,
) -> dict[str, Any]:
    """One pair in pairs.jsonl form (a, b in message-id order) with what the summary reads."""
    assert a.rank is not None and b.rank is not None
    better, worse = (a, b) if a.rank < b.rank else (b, a)
    shown = (better, worse) if better_first(seed, a.message_id, b.message_id) else (worse, better)
    return {
        "id": pair_id(a.message_id, b.message_id),
        "instruction": instruction,
        "input": "",
        "output_1": shown[0].text.strip(),
        "output_2": shown[1].text.strip(),
        "better": 1 if shown[0] is better else 2,
        "ranks": [shown[0].rank, shown[1].rank],
        "lang": parent.lang or "unknown",
        "turn": (len(chain) + 1) // 2,  # 1 = a reply to the root prompt
        "parent_id": parent.message_id,
        "message_ids": [shown[0].message_id, shown[1].message_id],
    }
