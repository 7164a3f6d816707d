"""Print the completion of one prompt (one process, or under torchrun with MP = world size)."""

from __future__ import annotations

import argparse
import sys

from salmon_wf.config import add_list_option, command_defaults
from salmon_wf.engine.chat import STYLES, encode_chat, format_prompt
from salmon_wf.engine.sampler import Request, Sampler, SamplingParams
from salmon_wf.model.dtypes import COMPUTE_DTYPES
from salmon_wf.model.loader import load_model
from salmon_wf.model.parallel import setup_model_parallel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="directory: params.json, consolidated.NN.pth"
    )
    parser.add_argument(
        "--tokenizer", help="tokenizer.model / tokenizer.json overriding the model's"
    )
    parser.add_argument("--prompt", required=True)
    # The sampling runs' defaults (the schema's definitions/sampling_run) and the model's.
    d, m = command_defaults("generate"), command_defaults("model")
    parser.add_argument("--style", choices=STYLES, default=d["style"], help="prompt format")
    parser.add_argument("--system", default="", help="meta / system prompt for the style")
    parser.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"])
    parser.add_argument("--temperature", type=float, default=d["temperature"], help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=d["top_p"])
    parser.add_argument("--seed", type=int, default=42)
    add_list_option(parser, "stop", d["stop"], "stop string (repeatable)")
    parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default=m["dtype"])
    parser.add_argument("--device", default=m["device"], help="auto, cpu or cuda")


def run(args: argparse.Namespace) -> int:
    ctx = setup_model_parallel(args.device)
    loaded = load_model(args.model, ctx, dtype=args.dtype, tokenizer_path=args.tokenizer)
    tokenizer = loaded.tokenizer
    if args.style == "chat_template":
        ids = encode_chat(tokenizer, args.prompt, meta_prompt=args.system)
    else:
        text = format_prompt(args.style, args.prompt, meta_prompt=args.system)
        ids = tokenizer.encode(text, bos=tokenizer.add_bos and args.style != "chatml")
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    sampler = Sampler(loaded.model, tokenizer, max_batch=1)
    (completion,) = sampler.generate([Request("prompt", ids)], params)
    if ctx.is_main:
        sys.stdout.write(completion.text + "\n")
        print(f"[{completion.finish_reason}, {len(completion.token_ids)} tokens]", file=sys.stderr)
    return 0
