"""Fitting prompts into the context window: the documented long-prompt policy.

Policy "skip" (default): a prompt that leaves no room is not run; the caller records it as
skipped and counts it. Policy "truncate": keep the first `keep_head` tokens (BOS, shared meta
prompt) and as many of the last tokens as fit, dropping the middle; the tail is kept because it
holds the cue the model must continue ("### Dromedary", "Output ("). Policy "left": keep the
last `limit` tokens, BOS included in what is cut, as SALMON's judge does (a Hugging Face tokenizer
with truncation_side="left" over text that starts with the BOS token's text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

POLICIES = ("skip", "truncate", "left")


@dataclass(frozen=True)
class Fitted:
    ids: list[int] | None  # None: skipped
    truncated: bool = False


def fit_prompt(ids: list[int], limit: int, policy: str, keep_head: int = 1) -> Fitted:
    """Fit `ids` into at most `limit` tokens under `policy`."""
    if policy not in POLICIES:
        raise ValueError(f"long-prompt policy must be one of {POLICIES}, got {policy!r}")
    if len(ids) <= limit:
        return Fitted(ids)
    if policy == "left" and limit > 0:
        return Fitted(ids[len(ids) - limit :], truncated=True)
    if policy != "truncate" or limit <= keep_head:
        return Fitted(None)
    tail = limit - keep_head
    return Fitted(ids[:keep_head] + ids[len(ids) - tail :], truncated=True)


def common_prefix(seqs: Sequence[Sequence[int]]) -> list[int]:
    """Longest common prefix: that of the lexicographic min and max covers all the others."""
    low, high = min(seqs), max(seqs)
    for i, (x, y) in enumerate(zip(low, high, strict=False)):
        if x != y:
            return list(low[:i])
    return list(low)
