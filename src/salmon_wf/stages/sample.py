"""Sample one response per prompt for one shard of one sampling run (resumable).

Shard i of n takes prompts[i::n]. Each finished prompt is appended as one JSON line at once; a
rerun after a crash or kill resumes after the last complete line. A record: id, instruction,
input, generation (raw text), response (cut at the first stop string, stripped),
finish_reason, n_prompt_tokens, n_generated_tokens, truncated.

The context window is SALMON's (Dromedary's generate): with --window W and --max-shared-seq-len
S, a prompt's tokens after the shared meta prefix (at most S of its leading tokens that every
prompt shares) plus its generation fit in W tokens. The shared prefix is found per prompt
against the meta prompt's own tokens, not per batch as in Dromedary, so a prompt's budget does
not depend on its neighbours. A prompt that leaves no room is skipped (SALMON's run then
decodes nothing for it, and the pair falls to the length filter).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from salmon_wf.config import add_list_option, command_defaults
from salmon_wf.data.jsonl import read_jsonl, read_utf8
from salmon_wf.engine.chat import STYLES, encode_chat, format_prompt
from salmon_wf.engine.context import common_prefix
from salmon_wf.engine.sampler import Completion, Request, Sampler, SamplingParams
from salmon_wf.errors import TemplateError
from salmon_wf.killpoint import kill_point
from salmon_wf.model.tokenizer import Tokenizer
from salmon_wf.progress import Progress
from salmon_wf.stages.common import (
    Termination,
    add_model_arguments,
    add_shard_arguments,
    resume,
    shard_items,
    start_rank,
)

MIN_SHARED_PREFIX = 8  # tokens: below this a prefix cache is not worth a copy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling run's flags; every default is the schema's (definitions/sampling_run)."""
    d = command_defaults("sample")
    add_model_arguments(parser)
    add_shard_arguments(parser)
    parser.add_argument("--prompts", required=True, type=Path, help="prompts.jsonl")
    parser.add_argument("--output", required=True, type=Path, help="this shard's responses")
    parser.add_argument("--seed", type=int, default=42, help="the run's seed (config: required)")
    parser.add_argument("--temperature", type=float, default=d["temperature"])
    parser.add_argument("--top-p", type=float, default=d["top_p"])
    parser.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"])
    add_list_option(
        parser, "stop", d["stop"], "stop string (repeatable); --no-stop: to EOS or the budget"
    )
    add_list_option(
        parser,
        "cut_at",
        d["cut_at"],
        "the response is the generation cut at the first of these (default: the stops)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=d["window"],
        help="prompt after the shared prefix + generation, in tokens (SALMON's max_seq_len)",
    )
    parser.add_argument(
        "--max-shared-seq-len",
        type=int,
        default=d["max_shared_seq_len"],
        help="shared leading tokens kept outside the window (SALMON: 640; 0: none)",
    )
    parser.add_argument("--style", choices=STYLES, default=d["style"])
    parser.add_argument("--meta-prompt", type=Path, help="text file put before every prompt")
    parser.add_argument(
        "--batch-size", type=int, default=d["batch_size"], help="prompts decoded at once"
    )
    parser.add_argument("--label", default="sample", help="name shown in progress lines")


def clean_response(generation: str, stops: tuple[str, ...]) -> str:
    """SALMON's cleaning: cut at the first stop string, strip whitespace.

    A generation that hit the token limit inside a multi-byte character ends in U+FFFD; that
    fragment is dropped too.
    """
    cut = len(generation)
    for stop in stops:
        found = generation.find(stop)
        if found >= 0:
            cut = min(cut, found)
    return generation[:cut].rstrip("\ufffd").strip()


def render(style: str, prompt: dict, meta: str) -> str:
    return format_prompt(style, prompt["instruction"], prompt.get("input", ""), meta)


def uses_bos(style: str, tok: Tokenizer) -> bool:
    """Dromedary prompts always start with BOS (SALMON encodes with bos=True); chatml never."""
    if style == "dromedary":
        return tok.bos_id is not None
    return style != "chatml" and tok.add_bos


def encode_prompt(tok: Tokenizer, style: str, prompt: dict, meta: str) -> list[int]:
    """The token ids the model is given for one prompt record."""
    if style == "chat_template":
        return encode_chat(tok, prompt["instruction"], prompt.get("input", ""), meta)
    return tok.encode(render(style, prompt, meta), bos=uses_bos(style, tok))


def context_limit(
    ids: list[int], meta_ids: list[int], window: int | None, max_shared: int
) -> int | None:
    """SALMON's per-prompt context: the shared leading tokens (at most `max_shared`) + window.

    `meta_ids` is the encoding of the prompt format with an empty instruction; what a prompt
    shares with it is what every prompt of the run shares (BOS, the meta prompt).
    """
    if window is None:
        return None
    shared = len(common_prefix([ids, meta_ids])) if max_shared > 0 else 0
    return min(shared, max_shared) + window


def to_record(prompt: dict, completion: Completion, cuts: tuple[str, ...]) -> dict:
    return {
        "id": prompt["id"],
        "instruction": prompt["instruction"],
        "input": prompt.get("input", ""),
        "generation": completion.text,
        "response": clean_response(completion.text, cuts),
        "finish_reason": completion.finish_reason,
        "n_prompt_tokens": completion.n_prompt_tokens,
        "n_generated_tokens": len(completion.token_ids),
        "truncated": completion.truncated,
    }


def run(args: argparse.Namespace) -> int:
    prompts = shard_items(
        list(read_jsonl(args.prompts, required=("id", "instruction"))), args.shard, args.num_shards
    )
    stops = tuple(args.stop)
    cuts = stops if args.cut_at is None else tuple(args.cut_at)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        stop=stops,
        seed=args.seed,
    )
    meta = read_utf8(args.meta_prompt, TemplateError).rstrip("\n") if args.meta_prompt else ""
    ctx, loaded = start_rank(args)
    tok = loaded.tokenizer

    def finished(records: list[dict]) -> list[dict]:
        """This shard's prompts an earlier run answered, in prompt order."""
        done = {r["id"]: r for r in records}
        return [done[p["id"]] for p in prompts if p["id"] in done]

    out, kept = resume(args.output, args.fingerprint, ctx, finished)
    resumed = {r["id"] for r in kept}
    todo = [p for p in prompts if p["id"] not in resumed]
    by_id = {p["id"]: p for p in todo}
    meta_ids = encode_prompt(tok, args.style, {"instruction": ""}, meta)
    requests = []
    for p in todo:
        ids = encode_prompt(tok, args.style, p, meta)
        limit = context_limit(ids, meta_ids, args.window, args.max_shared_seq_len)
        requests.append(Request(p["id"], ids, max_len=limit))
    shared = common_prefix([r.prompt_ids for r in requests]) if len(requests) > 1 else []
    sampler = Sampler(
        loaded.model,
        tok,
        max_batch=args.batch_size,
        max_seq_len=args.max_seq_len,
        shared_prefix=shared if len(shared) >= MIN_SHARED_PREFIX else None,
        long_prompt_policy=args.long_prompt_policy,
    )
    label = f"{args.label} shard {args.shard + 1}/{args.num_shards}"
    progress = Progress(label, len(prompts), len(kept), ctx.is_main, unit="prompts")
    term = Termination(ctx)
    position = {p["id"]: i for i, p in enumerate(prompts)}
    for written, completion in enumerate(sampler.generate(requests, params), start=1):
        out.append([to_record(by_id[completion.key], completion, cuts)])
        kill_point("shard.append")  # a test hook (killpoint.py); nothing when unset
        progress.update(tokens=sampler.stats["generated_tokens"])
        if term.requested():
            return term.stop(label, out, written, len(kept))
    out.finish(order=lambda record: position[record["id"]])  # prompt order, resumed or not
    if ctx.is_main:
        stats = sampler.stats
        print(f"[{label}] done: {len(prompts)} prompts ({len(kept)} resumed), {stats}", flush=True)
    return 0
