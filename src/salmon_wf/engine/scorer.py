"""Next-token logits at the end of many prompts that share long prefixes (the judge's workload).

The prompts are arranged in a radix tree of token sequences. Each edge is run once, continuing
from its parent's cached keys/values, and siblings run together as one right-padded batch. Only
the last real position of each edge goes through the LM head. One judged pair under 11 principles
and 2 orders thus costs: the template head once, the pair once per order, and 22 short tails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from salmon_wf.engine.context import common_prefix
from salmon_wf.model.kv_cache import KVCache
from salmon_wf.model.transformer import Transformer


@dataclass
class _Node:
    edge: list[int]  # tokens from the parent's end to this node
    ends: list[int] = field(default_factory=list)  # prompts whose last token ends this edge
    children: list[_Node] = field(default_factory=list)


def build_tree(prompts: Sequence[Sequence[int]], indices: list[int], depth: int = 0) -> _Node:
    """Radix tree over prompts[indices], all of which share their first `depth` tokens."""
    seqs = [prompts[i] for i in indices]
    common = common_prefix([list(s[depth:]) for s in seqs])
    end = depth + len(common)
    node = _Node(edge=list(common))
    groups: dict[int, list[int]] = {}
    for i in indices:
        if len(prompts[i]) == end:
            node.ends.append(i)
        else:
            groups.setdefault(prompts[i][end], []).append(i)
    node.children = [build_tree(prompts, group, end) for group in groups.values()]
    return node


class PrefixScorer:
    """Scores prompts with prefix sharing; `max_rows` bounds the rows of one forward batch.

    `shared_prefix` (e.g. BOS + the judging template's head) is run once at construction and
    reused by every call whose prompts all start with it. A prompt's scores then depend only on
    the prompts it is scored with, not on earlier calls: the judge scores one pair per call, so
    its scores are the same bits whatever the shard count.
    """

    def __init__(
        self, model: Transformer, max_rows: int = 16, shared_prefix: Sequence[int] = ()
    ) -> None:
        self.model = model
        self.max_rows = max_rows
        self.stats = {"prompts": 0, "prompt_tokens": 0, "tokens_run": 0, "forwards": 0}
        self.prefix = list(shared_prefix)
        self.prefix_cache: KVCache | None = None
        if self.prefix:
            self.prefix_cache = KVCache.allocate(model, 1, len(self.prefix))
            prefix = torch.tensor([self.prefix], device=model.device)
            model(prefix, 0, self.prefix_cache, None, torch.tensor([len(self.prefix) - 1]))
            self.stats["tokens_run"] += len(self.prefix)

    def score(self, prompts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> torch.Tensor:
        """[len(prompts), len(token_ids)] float32 logits of the next token after each prompt."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("cannot score an empty prompt")
        limit = self.model.args.max_seq_len
        too_long = [i for i, p in enumerate(prompts) if len(p) > limit]
        if too_long:
            raise ValueError(f"prompts {too_long[:5]} exceed the context of {limit} tokens")
        vocab = self.model.args.vocab_size
        if any(not 0 <= t < vocab for t in token_ids):
            raise ValueError(f"token ids {list(token_ids)} outside the vocabulary of {vocab}")
        out = torch.full((len(prompts), len(token_ids)), float("nan"))
        self.stats["prompts"] += len(prompts)
        self.stats["prompt_tokens"] += sum(len(p) for p in prompts)
        if not prompts:
            return out
        ids = torch.tensor(list(token_ids), device=self.model.device)
        p = len(self.prefix)
        if self.prefix_cache is not None and all(
            len(x) > p and list(x[:p]) == self.prefix for x in prompts
        ):
            parent, depth = self.prefix_cache, p
        else:
            parent, depth = None, 0
        root = build_tree(prompts, list(range(len(prompts))), depth)
        self._run_children([root] if root.edge else root.children, parent, depth, ids, out)
        return out

    def _run_children(
        self,
        nodes: list[_Node],
        parent: KVCache | None,
        length: int,
        ids: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        model, device = self.model, self.model.device
        for first in range(0, len(nodes), self.max_rows):
            chunk = nodes[first : first + self.max_rows]
            width = max(len(n.edge) for n in chunk)
            # Every position a row reads is written first (the parent's copied, the rest by the
            # forward, padding included), so the cache needs no zeroing.
            work = KVCache.allocate(model, len(chunk), length + width, zeroed=False)
            rows = torch.arange(len(chunk), device=device)
            if parent is not None:
                work.copy_rows(parent, torch.zeros_like(rows), rows, length)
            tokens = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, node in enumerate(chunk):
                tokens[r, : len(node.edge)] = torch.tensor(node.edge)
            last = torch.tensor([len(n.edge) - 1 for n in chunk], device=device)
            edges = [len(n.edge) for n in chunk]
            logits = model(tokens.to(device), length, work, None, last, lengths=edges)
            self.stats["forwards"] += 1
            self.stats["tokens_run"] += sum(len(n.edge) for n in chunk)
            picked = logits.index_select(-1, ids).float().cpu()
            for r, node in enumerate(chunk):
                for i in node.ends:
                    out[i] = picked[r]
            for r, node in enumerate(chunk):
                if node.children:
                    end = length + len(node.edge)
                    own = KVCache.allocate(model, 1, end, zeroed=False)  # all copied
                    own.copy_rows(work, rows[r : r + 1], torch.zeros_like(rows[:1]), end)
                    self._run_children(node.children, own, end, ids, out)
