"""Judge benchmark: the judge stage's PrefixScorer against SALMON's way of judging.

SALMON (the baseline) forwards every (pair, principle, order) prompt on its own row, right-padded
to 1536 tokens (or to the longest prompt, when one is longer), with the LM head over every
position, and reads the logits of "a" and "b" at the last real position. Ours is exactly what
`salmon_wf.stages.judge` does: a PrefixScorer holding the template head's cache, one `score()`
call per pair with its 2 x principles prompts. Both sides run the same random-weight model on the
same token ids in one process; the decisions and the relative scores of both are compared.

Prompts are the judge stage's own (`pair_prompts` over the real template and principle file); a
stand-in tokenizer turns each word or punctuation mark into one token (ids from a hash), so no
real tokenizer is needed. Instruction and responses are random words, one token each.
"""

from __future__ import annotations

import re
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from common import Entry, log, random_model, timed

from salmon_wf.data.principles import Principle, load_principles
from salmon_wf.engine.scorer import PrefixScorer
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.transformer import Transformer, body_flops_per_token
from salmon_wf.stages.judge import decide, load_template, pair_prompts, template_head
from salmon_wf.stages.pair import Pair

# A small LLaMA (GQA, SwiGLU); its LM head is 25% of the per-token matmul FLOPs (SmolLM2-135M: 21%).
JUDGE_SHAPE = ModelArgs(
    dim=384, n_layers=6, n_heads=6, n_kv_heads=2, vocab_size=8192, hidden_dim=1024,
    max_seq_len=2048,
)  # fmt: skip
SALMON_PAD = 1536  # every SALMON judging prompt is padded to this many tokens
SALMON_ROWS = 4  # prompts per forward in the baseline (the cost per prompt hardly depends on it)
MAX_ROWS = 16  # the judge stage's default --max-rows
ANSWER_CONTEXT = "Output ("
_PIECE = re.compile(r"\w+|[^\w\s]")


class PseudoTokenizer:
    """One token per word or punctuation mark; ids from a hash (stands in for a BPE tokenizer)."""

    bos_id = 1

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = [3 + zlib.crc32(p.encode()) % (self.vocab_size - 3) for p in _PIECE.findall(text)]
        return [self.bos_id, *ids] if bos else ids


def resource(name: str) -> Path:
    return Path(str(resources.files("salmon_wf.resources").joinpath(name)))


def principles_of(count: int, shared_names: bool = False) -> list[Principle]:
    """The first `count` principles of the real file, then renamed copies.

    A copy's name starts with a word of its own ("Aspect12 Concise"), so every principle's tail
    branches off at the same tree node, as distinct real principles do. With `shared_names` a
    copy is "Concise 2": it shares its leading tokens with the original, which nests the tails
    one level deeper in the scorer's prefix tree.
    """
    base = load_principles(resource("principles.json"))
    out = []
    for i in range(count):
        p = base[i % len(base)]
        name = p.dimension
        if i >= len(base):
            name = f"{name} {i // len(base) + 1}" if shared_names else f"Aspect{i} {name}"
        out.append(Principle(name, p.definition, p.negative_definition))
    return out


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{x}" for x in rng.integers(0, 100_000, n))


def make_pairs(
    n: int, seed: int, response_tokens: tuple[int, int] = (100, 700), fixed: int | None = None
) -> list[Pair]:
    """Instructions of 20-60 tokens; each response 100-700 tokens (or exactly `fixed`)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        lengths = [fixed or int(rng.integers(response_tokens[0], response_tokens[1] + 1))]
        lengths.append(fixed or int(rng.integers(response_tokens[0], response_tokens[1] + 1)))
        instruction = words(rng, int(rng.integers(20, 61)))
        pairs.append(Pair(f"p{i}", instruction, "", words(rng, lengths[0]), words(rng, lengths[1])))
    return pairs


class Workload:
    """Token ids of every pair's 2 x principles prompts, the head and the answer ids."""

    def __init__(self, pairs: list[Pair], principles: list[Principle], vocab: int) -> None:
        tok = PseudoTokenizer(vocab)
        template = load_template(resource("judge_template.txt"), ANSWER_CONTEXT)
        self.n = len(principles)
        self.prompts = [
            [tok.encode(t, bos=True) for t in pair_prompts(pair, principles, template)]
            for pair in pairs
        ]
        self.head = template_head(tok, template, bos=True)  # type: ignore[arg-type]
        self.ids = [tok.encode("a")[0], tok.encode("b")[0]]
        assert self.ids[0] != self.ids[1]

    @property
    def longest(self) -> int:
        return max(len(p) for pp in self.prompts for p in pp)

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """[pairs * 2n, 2] logits of (a, b) -> [pairs, n, 2] relative scores (s12, s21)."""
        lg = logits.double().numpy().reshape(-1, 2, self.n, 2)
        s12 = lg[:, 0, :, 0] - lg[:, 0, :, 1]
        s21 = lg[:, 1, :, 1] - lg[:, 1, :, 0]
        return np.stack([s12, s21], axis=-1)


def run_ours(model: Transformer, work: Workload) -> tuple[float, np.ndarray, dict]:
    """The judge stage's loop: one score() call per pair (scorer built once, like a shard)."""
    scorer = PrefixScorer(model, MAX_ROWS, work.head)
    base = dict(scorer.stats)

    def go() -> torch.Tensor:
        return torch.cat([scorer.score(prompts, work.ids) for prompts in work.prompts])

    seconds, logits = timed(go)
    stats = {k: v - base[k] for k, v in scorer.stats.items()}
    return seconds, work.scores(logits), stats  # type: ignore[arg-type]


def run_salmon(
    model: Transformer, work: Workload, pad: int, full_head: bool = True
) -> tuple[float, np.ndarray]:
    """Every prompt on its own row, right-padded to `pad`, SALMON_ROWS rows per forward."""
    flat = [p for prompts in work.prompts for p in prompts]
    ids = torch.tensor(work.ids)

    def go() -> torch.Tensor:
        out = []
        for start in range(0, len(flat), SALMON_ROWS):
            chunk = flat[start : start + SALMON_ROWS]
            tokens = torch.zeros((len(chunk), pad), dtype=torch.long)
            for r, p in enumerate(chunk):
                tokens[r, : len(p)] = torch.tensor(p)
            last = torch.tensor([len(p) - 1 for p in chunk])
            if full_head:
                logits = model(tokens)  # [rows, pad, vocab]: the LM head at every position
                out.append(logits[torch.arange(len(chunk)), last][:, ids])
            else:
                out.append(model(tokens, logits_at=last)[:, ids])
        return torch.cat(out)

    seconds, logits = timed(go)
    return seconds, work.scores(logits)  # type: ignore[arg-type]


def compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[int, float]:
    """(decisions that differ, max |score difference|) over every (pair, principle)."""
    mismatches = sum(
        decide(*a) != decide(*b)
        for a, b in zip(ours.reshape(-1, 2).tolist(), theirs.reshape(-1, 2).tolist(), strict=True)
    )
    return int(mismatches), float(np.abs(ours - theirs).max())


def run(quick: bool) -> tuple[list[Entry], dict]:
    args = JUDGE_SHAPE
    model, _ = random_model(args, seed=0)
    n_salmon = 2 if quick else 8  # pairs both sides judge (the baseline costs ~10 s a pair)
    n_ours = 8 if quick else 32  # pairs of the wider sample (ours only)
    n_growth = 2 if quick else 6  # pairs per point of the growth tables
    principles = principles_of(11)
    pairs = make_pairs(n_ours, seed=1)
    work = Workload(pairs[:n_salmon], principles, args.vocab_size)
    pad = max(SALMON_PAD, work.longest)
    model(torch.tensor([work.head]))  # warm-up
    judgments = n_salmon * len(principles)

    log(f"judge: ours on {n_salmon} pairs x {len(principles)} principles x 2 orders")
    ours_s, ours_scores, ours_stats = min(
        (run_ours(model, work) for _ in range(3)), key=lambda r: r[0]
    )
    log(f"judge: SALMON baseline on the same {n_salmon} pairs (padded to {pad}, full LM head)")
    salmon_s, salmon_scores = run_salmon(model, work, pad)
    mismatches, max_diff = compare(ours_scores, salmon_scores)
    speedup = salmon_s / ours_s

    # The last-position LM head alone (SALMON's padding kept), on one pair: its cost does not
    # depend on the pair, as every prompt is padded to the same length.
    one = Workload(pairs[:1], principles, args.vocab_size)
    log("judge: SALMON padded prompts with the LM head at the last position only (1 pair)")
    last_s, last_scores = run_salmon(model, one, pad, full_head=False)
    salmon_per_pair = salmon_s / n_salmon

    log(f"judge: ours on {n_ours} pairs (wider sample of the length mix)")
    wide = Workload(pairs, principles, args.vocab_size)
    wide_s, _, wide_stats = run_ours(model, wide)

    details: dict = {
        "shape": args.to_json(),
        "principles": len(principles),
        "salmon_pad_tokens": pad,
        "salmon_rows_per_forward": SALMON_ROWS,
        "pairs_compared": n_salmon,
        "mean_response_tokens_compared": float(
            np.mean([len(p.output_1.split()) + len(p.output_2.split()) for p in pairs[:n_salmon]])
            / 2
        ),
        "salmon_seconds": salmon_s,
        "salmon_judgments_per_s": judgments / salmon_s,
        "ours_seconds": ours_s,
        "ours_judgments_per_s": judgments / ours_s,
        "speedup": speedup,
        "decision_mismatches": mismatches,
        "max_abs_score_diff": max_diff,
        "salmon_tokens_per_pair": 2 * len(principles) * pad,
        "ours_tokens_run_per_pair": ours_stats["tokens_run"] / n_salmon,
        "ours_forwards_per_pair": ours_stats["forwards"] / n_salmon,
        "salmon_last_head_s_per_pair": last_s,
        "salmon_full_head_s_per_pair": salmon_per_pair,
        "speedup_from_last_head_alone": salmon_per_pair / last_s,
        "last_head_max_abs_score_diff": float(np.abs(last_scores - salmon_scores[:1]).max()),
        "wide_pairs": n_ours,
        "wide_ours_judgments_per_s": n_ours * len(principles) / wide_s,
        "wide_speedup_vs_salmon_per_pair_cost": salmon_per_pair / (wide_s / n_ours),
        "wide_ours_tokens_run_per_pair": wide_stats["tokens_run"] / n_ours,
    }
    flops_token = body_flops_per_token(args, pad // 2) + 2 * args.dim * args.vocab_size
    details["salmon_gflops"] = flops_token * pad * 2 * len(principles) * n_salmon / salmon_s / 1e9

    log("judge: growth with the number of principles")
    per_prompt = salmon_s / (n_salmon * 2 * len(principles))
    growth_p = []
    for count, shared in ((1, False), (4, False), (11, False), (22, False), (22, True)):
        w = Workload(pairs[:n_growth], principles_of(count, shared), args.vocab_size)
        seconds, _, stats = run_ours(model, w)
        growth_p.append(
            {
                "principles": count,
                "copies_share_name_prefix": shared,
                "ours_forwards_per_pair": stats["forwards"] / n_growth,
                "ours_s_per_pair": seconds / n_growth,
                "ours_judgments_per_s": n_growth * count / seconds,
                "ours_tokens_run_per_pair": stats["tokens_run"] / n_growth,
                "salmon_s_per_pair_derived": per_prompt * 2 * count,
            }
        )
    log("judge: growth with the response length")
    growth_l = []
    for length in (100, 300, 700):
        w = Workload(make_pairs(n_growth, seed=2, fixed=length), principles, args.vocab_size)
        seconds, _, stats = run_ours(model, w)
        growth_l.append(
            {
                "response_tokens": length,
                "prompt_tokens": max(len(p) for pp in w.prompts for p in pp),
                "ours_s_per_pair": seconds / n_growth,
                "ours_judgments_per_s": n_growth * len(principles) / seconds,
                "ours_tokens_run_per_pair": stats["tokens_run"] / n_growth,
                "salmon_s_per_pair": salmon_per_pair,
            }
        )
    details["growth_principles"] = growth_p
    details["growth_response_length"] = growth_l
    note = f"{n_salmon} pairs x {len(principles)} principles, both sides"
    entries = [
        Entry("judge_speedup_vs_salmon", speedup, 10.0, "x", True, note),
        Entry("judge_decision_mismatches", float(mismatches), 0.0, "count", False, note),
        Entry("judge_max_abs_score_diff", max_diff, 1e-4, "logit", False, note),
    ]
    return entries, details
