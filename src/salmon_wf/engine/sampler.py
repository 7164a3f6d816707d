"""Batched sampling with a KV cache, continuous batching and a shared-prefix cache.

Every prompt owns a cache row (slot) while it runs. Finished rows free their slot for the next
waiting prompt at once, so the batch never idles until its longest member ends. The shared
prefix (the meta prompt every prompt starts with) is run once; its keys/values are copied into
each new slot. Each prompt draws its random numbers from its own generator, seeded from
(run seed, prompt key), so its text does not depend on the shard, batch or slot it lands in.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from salmon_wf.config import command_defaults
from salmon_wf.engine.context import fit_prompt
from salmon_wf.model.kv_cache import KVCache
from salmon_wf.model.tokenizer import Tokenizer
from salmon_wf.model.transformer import Transformer

_RUN = command_defaults("generate")  # the schema's sampling run defaults


@dataclass(frozen=True)
class SamplingParams:
    """One run's sampling; the defaults are the config schema's (stop: none, a library's own)."""

    temperature: float = _RUN["temperature"]  # 0 = greedy
    top_p: float = _RUN["top_p"]
    max_new_tokens: int = _RUN["max_new_tokens"]
    stop: tuple[str, ...] = ()
    seed: int = 42
    ignore_eos: bool = False  # run every row to max_new_tokens (benchmarks: equal work)

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampling parameters: {self}")


@dataclass(frozen=True)
class Request:
    key: str  # stable id: seeds the prompt's random stream
    prompt_ids: list[int]
    max_new_tokens: int | None = None  # this prompt's own budget (default: the run's)
    max_len: int | None = None  # this prompt's context: prompt + generation (default: sampler's)


@dataclass(frozen=True)
class Completion:
    key: str
    text: str  # decoded new tokens (EOS excluded; a stop string, when hit, included)
    token_ids: list[int]
    finish_reason: str  # "stop" (stop string), "eos", "length", "skipped" (prompt too long)
    n_prompt_tokens: int
    truncated: bool = False


def prompt_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class _Slot:
    request: Request
    prompt_ids: list[int]
    truncated: bool
    position: int  # tokens in the cache so far
    budget: int
    uniforms: torch.Tensor
    generated: list[int] = field(default_factory=list)


NUCLEUS_CANDIDATES = 256  # top-k tried before a full sort of the vocabulary


def choose_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor
) -> torch.Tensor:
    """Greedy or nucleus sampling by inverse CDF, one uniform per row (batch-independent).

    With top_p = 1 nothing is cut, so the CDF runs in vocabulary order and no sort is needed.
    Otherwise the CDF runs over the probabilities sorted high to low (ties by token id): the top
    `NUCLEUS_CANDIDATES` usually hold the nucleus, and a full sort is the fallback; both give the
    same token.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    uniforms = uniforms.to(logits.device)  # drawn on the CPU: the same numbers on any device
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return _inverse_cdf(probs, uniforms)
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    values, _ = probs.topk(k, dim=-1)
    kth = values[:, -1:]
    if k < probs.shape[-1] and bool(
        (values.sum(dim=-1) >= top_p).all() and ((probs >= kth).sum(dim=-1) == k).all()
    ):
        # Exactly the k largest per row, no tie across the cut: re-sort them by (-p, id).
        ids = (probs >= kth).nonzero()[:, 1].view(-1, k)
        picked = _nucleus(probs.gather(-1, ids), top_p, uniforms)
        return ids.gather(-1, picked.unsqueeze(-1)).squeeze(-1)
    return _nucleus(probs, top_p, uniforms)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    cdf = probs.cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1).squeeze(-1)


def _nucleus(probs: torch.Tensor, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Column (in `probs`) drawn from the smallest high-to-low prefix holding `top_p` mass."""
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    picked = _inverse_cdf(sorted_probs, uniforms)
    return order.gather(-1, picked.unsqueeze(-1)).squeeze(-1)


class Sampler:
    """Generates completions for many prompts with at most `max_batch` running at once."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        max_batch: int = 8,
        max_seq_len: int | None = None,
        shared_prefix: list[int] | None = None,
        long_prompt_policy: str = "skip",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        # Logits past the tokenizer are padded rows (Dromedary's model_vocab_size) or ids no text
        # decodes to: never candidates.
        self.vocab = tokenizer.vocab_size
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or model.args.max_seq_len, model.args.max_seq_len)
        self.policy = long_prompt_policy
        self.prefix = list(shared_prefix or [])
        self.prefix_cache: KVCache | None = None
        self.stats = {
            "prompts": 0,
            "skipped": 0,
            "truncated": 0,
            "prefix_hits": 0,
            "decode_steps": 0,
            "generated_tokens": 0,
        }
        if len(self.prefix) >= self.max_seq_len:
            raise ValueError(f"shared prefix of {len(self.prefix)} tokens fills the context")
        if self.prefix:
            self.prefix_cache = KVCache.allocate(model, 1, len(self.prefix))
            prefix = torch.tensor([self.prefix], device=model.device)
            model(prefix, 0, self.prefix_cache, None, torch.tensor([len(self.prefix) - 1]))

    def generate(self, requests: Iterable[Request], params: SamplingParams) -> Iterator[Completion]:
        """Yield completions as they finish (not in input order)."""
        model, device = self.model, self.model.device
        pending = deque(requests)
        # Rows never grow past their own limit: a cache as long as the longest one is enough.
        longest = max((self._limit(r) for r in pending), default=self.max_seq_len)
        cache = KVCache.allocate(model, self.max_batch, longest)
        slots: list[_Slot | None] = [None] * self.max_batch
        stop_ids = self.tokenizer.stop_ids
        while pending or any(slots):
            admitted = []
            while pending and None in slots:
                request = pending.popleft()
                slot = self._admit(request, params)
                if slot is None:
                    yield Completion(request.key, "", [], "skipped", len(request.prompt_ids))
                    continue
                index = slots.index(None)
                slots[index] = slot
                admitted.append(index)
            if admitted:
                logits = self._prefill(cache, [(i, slots[i]) for i in admitted])
                self._advance(slots, admitted, logits, params)
            active = [i for i, s in enumerate(slots) if s is not None and not self._done(s)]
            if active:
                rows = torch.tensor(active, device=device)
                tokens = torch.tensor([[slots[i].generated[-1]] for i in active], device=device)
                starts = torch.tensor([slots[i].position for i in active], device=device)
                contiguous = active == list(range(len(active)))
                logits = model(
                    tokens,
                    starts,
                    cache,
                    None if contiguous else rows,
                    torch.zeros_like(starts),
                    exact=False,
                )
                self.stats["decode_steps"] += 1
                for i in active:
                    slots[i].position += 1
                self._advance(slots, active, logits, params)
            for i, slot in enumerate(slots):
                if slot is not None and self._done(slot):
                    slots[i] = None
                    yield self._finish(slot, stop_ids, params)

    def _limit(self, request: Request) -> int:
        return min(request.max_len or self.max_seq_len, self.max_seq_len)

    def _admit(self, request: Request, params: SamplingParams) -> _Slot | None:
        self.stats["prompts"] += 1
        limit = self._limit(request)
        room = limit - 1  # at least one new token must fit
        keep = len(self.prefix) if request.prompt_ids[: len(self.prefix)] == self.prefix else 1
        fitted = fit_prompt(request.prompt_ids, room, self.policy, keep_head=keep)
        if fitted.ids is None or not fitted.ids:
            self.stats["skipped"] += 1
            return None
        self.stats["truncated"] += int(fitted.truncated)
        gen = torch.Generator().manual_seed(prompt_seed(params.seed, request.key))
        wanted = request.max_new_tokens or params.max_new_tokens
        budget = min(wanted, params.max_new_tokens, limit - len(fitted.ids))
        return _Slot(
            request=request,
            prompt_ids=fitted.ids,
            truncated=fitted.truncated,
            position=0,
            budget=budget,
            uniforms=torch.rand(params.max_new_tokens, generator=gen, dtype=torch.float64),
        )

    def _prefill(self, cache: KVCache, entries: list[tuple[int, _Slot]]) -> torch.Tensor:
        """Run the new prompts (after any shared prefix): on a CPU one at a time, elsewhere as one
        right-padded batch.

        A CPU's bf16 products change kernels with the row count (oneDNN on an Intel Xeon with AMX:
        a row's bits are its own up to 32 rows per product, not beyond), so a prompt prefilled
        with others could get other logits than alone: in bf16, 12 of 16 demo prompts sampled
        other text at batch 8 than at batch 1. Alone, its products are the same whatever its
        batch; decode steps have one row per prompt (max_batch rows).
        """
        device = self.model.device
        starts, suffixes = [], []
        p = len(self.prefix)
        for index, slot in entries:
            ids = slot.prompt_ids
            if self.prefix_cache is not None and len(ids) > p and ids[:p] == self.prefix:
                row = torch.tensor([index], device=device)
                cache.copy_rows(self.prefix_cache, torch.zeros_like(row), row, p)
                self.stats["prefix_hits"] += 1
                starts.append(p)
                suffixes.append(ids[p:])
            else:
                starts.append(0)
                suffixes.append(ids)
        rows = [i for i, _ in entries]
        if device.type == "cpu":  # one prompt per forward: see the docstring
            parts = [
                self._prefill_rows(cache, [row], [start], [suffix])
                for row, start, suffix in zip(rows, starts, suffixes, strict=True)
            ]
            logits = torch.cat(parts)
        else:
            logits = self._prefill_rows(cache, rows, starts, suffixes)
        for (_, slot), start, suffix in zip(entries, starts, suffixes, strict=True):
            slot.position = start + len(suffix)
        return logits

    def _prefill_rows(
        self, cache: KVCache, rows: list[int], starts: list[int], suffixes: list[list[int]]
    ) -> torch.Tensor:
        """Logits at the last token of each suffix, run as one right-padded batch into `rows`."""
        device = self.model.device
        width = max(len(s) for s in suffixes)
        tokens = torch.zeros((len(suffixes), width), dtype=torch.long)
        for r, suffix in enumerate(suffixes):
            tokens[r, : len(suffix)] = torch.tensor(suffix)
        return self.model(
            tokens.to(device),
            torch.tensor(starts, device=device),
            cache,
            torch.tensor(rows, device=device),
            torch.tensor([len(s) - 1 for s in suffixes], device=device),
            exact=False,
            lengths=[len(s) for s in suffixes],
        )

    def _advance(
        self,
        slots: list[_Slot | None],
        indices: list[int],
        logits: torch.Tensor,
        params: SamplingParams,
    ) -> None:
        # A stop string of n characters spans at most 4n byte-fallback tokens.
        window = 4 * max((len(s) for s in params.stop), default=0) + 4
        steps = [len(slots[i].generated) for i in indices]
        uniforms = torch.stack([slots[i].uniforms[s] for i, s in zip(indices, steps, strict=True)])
        logits = logits[:, : self.vocab]
        chosen = choose_tokens(logits, params.temperature, params.top_p, uniforms).tolist()
        stop_ids = self.tokenizer.stop_ids
        self.stats["generated_tokens"] += len(indices)
        for i, token in zip(indices, chosen, strict=True):
            slot = slots[i]
            slot.generated.append(token)
            if token in stop_ids and not params.ignore_eos:
                slot.budget = len(slot.generated)  # marks done; reason found in _finish
            elif params.stop:
                tail = self.tokenizer.decode(slot.generated[-window:])
                if any(s in tail for s in params.stop):
                    slot.budget = len(slot.generated)

    @staticmethod
    def _done(slot: _Slot) -> bool:
        return len(slot.generated) >= slot.budget

    def _finish(self, slot: _Slot, stop_ids: frozenset[int], params: SamplingParams) -> Completion:
        ids = slot.generated
        if ids and ids[-1] in stop_ids and not params.ignore_eos:
            reason, ids = "eos", ids[:-1]
        else:
            reason = "length"
        text = self.tokenizer.decode(ids)
        if reason == "length" and any(s in text for s in params.stop):
            reason = "stop"
        return Completion(
            key=slot.request.key,
            text=text,
            token_ids=ids,
            finish_reason=reason,
            n_prompt_tokens=len(slot.prompt_ids),
            truncated=slot.truncated,
        )
