"""Convert a Hugging Face LLaMA / Mistral / Qwen2 folder (+ LoRA adapters) to Meta's layout.

HF_DIR holds config.json, the weights (model.safetensors, sharded safetensors with
model.safetensors.index.json, or pytorch_model*.bin, loaded with weights_only) and the tokenizer
(tokenizer.json and/or tokenizer.model, tokenizer_config.json; special_tokens_map.json and
generation_config.json are copied too). config.json becomes params.json; every config key is
used, listed as harmless (HARMLESS_CONFIG_KEYS), or checked to hold the one value this engine
implements (NEUTRAL_CONFIG_VALUES): anything else is an error naming the key, never ignored.

Weights are streamed: each tensor is read on its own, merged with the adapters (--adapter, in
order, fp32), permuted from HF's rotary layout to Meta's, cast to --dtype and written straight
into every rank's consolidated.NN.pth (shard_writer.py). Peak memory is about three copies of the
largest tensor (its stored dtype, fp32 when merging or casting, the slices), plus the Python
process; it does not grow with the model or the MP. For LLaMA-3-70B (embedding 128256 x 8192:
4.2 GB in fp32) that is about 10 GB whatever --mp, so a 64 GB node converts it. The model is
written into OUT_DIR.tmp and renamed to OUT_DIR at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from salmon_wf.errors import CheckpointError
from salmon_wf.model.checkpoint import expected_shapes
from salmon_wf.model.dtypes import DTYPES
from salmon_wf.model.hf_export import halves_to_interleaved
from salmon_wf.model.hf_weights import TensorFiles, open_weights
from salmon_wf.model.importing import (
    add_output_arguments,
    check_dtype_and_mp,
    check_out_dir,
    fresh_tmp_dir,
    rename_tensor,
    replace_dir,
)
from salmon_wf.model.lora import HF_TO_META, load_adapters, merge_hf
from salmon_wf.model.params import ModelArgs, check_rope_scaling, read_json_object
from salmon_wf.model.shard_writer import ShardWriter
from salmon_wf.model.tokenizer import load_tokenizer

FAMILIES = ("llama", "mistral", "qwen2")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",  # newer folders keep the chat template out of tokenizer_config.json
)
# config.json keys read into params.json.
USED_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "vocab_size",
    "tie_word_embeddings",
    "head_dim",
    "attention_bias",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
)
# Keys that do not change the forward pass at inference: identity and bookkeeping, token ids
# (the tokenizer files carry them), training-only settings (dropout, init, tensor-parallel
# pretraining splits that compute the same products), the stored dtype (--dtype decides).
HARMLESS_CONFIG_KEYS = (
    "architectures",
    "_name_or_path",
    "transformers_version",
    "transformers.js_config",
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "initializer_range",
    "attention_dropout",
    "pretraining_tp",
    "is_llama_config",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "unsloth_version",
    "tokenizer_class",
    "max_sequence_length",  # early LLaMA-1 conversions (huggyllama): same as the context length
)
# Keys the engine supports with one value only (HF's default); any other value is an error.
NEUTRAL_CONFIG_VALUES: dict[str, tuple[Any, ...]] = {
    "hidden_act": ("silu",),
    "mlp_bias": (False,),
    "rope_interleaved": (False,),
    "partial_rotary_factor": (1.0,),
    "quantization_config": (None,),
}

_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    **HF_TO_META,
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_LAYER_TENSOR = re.compile(r"model\.layers\.(\d+)\.([\w.]+)\.(weight|bias)")
# Tensors some checkpoints carry that the model recomputes (old rotary caches).
_SKIPPED_TENSOR = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def meta_name(hf_name: str) -> str | None:
    """Meta-layout key of an HF tensor name (None: not a weight of these families)."""
    return rename_tensor(hf_name, _GLOBAL_NAMES, _LAYER_TENSOR, _LAYER_NAMES)


def _rope(config: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """rope_theta and the scaling, from transformers 4's rope_theta / rope_scaling or 5's
    rope_parameters ({"rope_type": "default", "rope_theta": ...} when unscaled)."""
    parameters = config.get("rope_parameters") or {}
    if not isinstance(parameters, dict):
        raise CheckpointError(f"{source}: rope_parameters must be an object")
    theta = config.get("rope_theta", parameters.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling")
    key = "rope_scaling"
    if scaling is None and parameters.get("rope_type", "default") != "default":
        scaling, key = parameters, "rope_parameters"
    if scaling is None:
        return float(theta), None
    if not isinstance(scaling, dict):
        raise CheckpointError(f"{source}: rope_scaling must be an object")
    if scaling.get("rope_type", scaling.get("type")) == "default":
        return float(theta), None
    return float(theta), check_rope_scaling(scaling, source, key)


def _sliding_window(config: dict[str, Any], family: str, source: str) -> int | None:
    """The window that applies to some layer, or None when every layer attends in full."""
    window = config.get("sliding_window")
    layer_types = config.get("layer_types") or []
    unknown = sorted(set(layer_types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise CheckpointError(f"{source}: layer_types {unknown} are not supported")
    if family == "qwen2":  # Qwen2 ships a window but turns it off (use_sliding_window false)
        used = config.get("use_sliding_window", False) or "sliding_attention" in layer_types
        return window if used else None
    if layer_types and "sliding_attention" not in layer_types:
        return None
    return window


def config_to_args(config: dict[str, Any], source: str, log: Callable[[str], None]) -> ModelArgs:
    """params.json for an HF config, refusing every key that would change the maths unseen."""
    family = config.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(
            f"{source}: model_type {family!r} is not supported ({', '.join(FAMILIES)})"
        )
    known = set(USED_CONFIG_KEYS) | set(HARMLESS_CONFIG_KEYS) | set(NEUTRAL_CONFIG_VALUES)
    unknown = sorted(set(config) - known)
    if unknown:
        raise CheckpointError(
            f"{source}: unsupported config key(s) {', '.join(unknown)}: they may change the "
            "model's maths and this import does not implement them"
        )
    for key, allowed in NEUTRAL_CONFIG_VALUES.items():
        if key in config and config[key] not in allowed:
            raise CheckpointError(
                f"{source}: {key} = {config[key]!r} is not supported (only {allowed[0]!r})"
            )
    if family != "llama" and config.get("attention_bias"):
        raise CheckpointError(f"{source}: attention_bias is not a {family} option")
    missing = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if k not in config
    ]
    if missing or "vocab_size" not in config:
        raise CheckpointError(f"{source}: missing key(s) {', '.join(missing or ['vocab_size'])}")
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    theta, scaling = _rope(config, source)
    window = _sliding_window(config, family, source)
    context = config.get("max_position_embeddings", 2048)
    if window is not None and window < context:
        log(
            f"sliding_window {window} < max_position_embeddings {context}: max_seq_len set to "
            f"{window} (up to there sliding-window attention equals full attention)"
        )
        context = window
    attention_bias = bool(config.get("attention_bias", False))
    raw: dict[str, Any] = {
        "dim": dim,
        "n_layers": config["num_hidden_layers"],
        "n_heads": heads,
        "n_kv_heads": config.get("num_key_value_heads") or heads,
        "vocab_size": config["vocab_size"],
        "hidden_dim": config["intermediate_size"],
        "norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_seq_len": context,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        "qkv_bias": family == "qwen2" or attention_bias,
        "o_bias": attention_bias,
        "sliding_window": window,
    }
    if config.get("head_dim") not in (None, dim // heads):
        raw["head_dim"] = config["head_dim"]
    return ModelArgs.from_dict(raw, source)


def _plan(
    weights: TensorFiles, args: ModelArgs, source: Path
) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Meta name -> HF tensor name for every weight, after checking names and shapes."""
    shapes = expected_shapes(args)
    if args.tie_word_embeddings:
        shapes.pop("output.weight")
    plan: dict[str, str] = {}
    for name in weights.names:
        info = weights.info[name]
        if _SKIPPED_TENSOR.fullmatch(name):
            continue
        if name == "lm_head.weight" and args.tie_word_embeddings:
            continue  # tied: the embedding is the head (transformers ignores this copy too)
        target = meta_name(name)
        if target is None or target not in shapes:
            raise CheckpointError(
                f"{info.file}: unexpected tensor '{name}' for a {args.n_layers}-layer model "
                f"({source / 'config.json'})"
            )
        if info.shape != shapes[target]:
            raise CheckpointError(
                f"{info.file}: tensor '{name}' has shape {info.shape}, config.json implies "
                f"{shapes[target]}"
            )
        plan[target] = name
    missing = [n for n in shapes if n not in plan]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: missing weight(s) {', '.join(missing[:5])}{more}")
    return plan, shapes


def to_meta_layout(name: str, tensor: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """HF -> Meta rotary layout for wq / wk weights and biases; other tensors unchanged."""
    if ".attention.wq." in name:
        return halves_to_interleaved(tensor, args.n_heads)
    if ".attention.wk." in name:
        return halves_to_interleaved(tensor, args.kv_heads)
    return tensor


def _copy_tokenizer(hf_dir: Path, tmp: Path, args: ModelArgs) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copy2(hf_dir / name, tmp / name)
            copied.append(name)
    if not {"tokenizer.json", "tokenizer.model"} & set(copied):
        raise CheckpointError(f"{hf_dir}: no tokenizer.json or tokenizer.model")
    tokenizer = load_tokenizer(tmp)
    if tokenizer.vocab_size > args.vocab_size:
        raise CheckpointError(
            f"{hf_dir}: tokenizer has {tokenizer.vocab_size} tokens, config.json vocab_size is "
            f"{args.vocab_size}"
        )
    return copied


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def import_hf(
    hf_dir: str | Path,
    out_dir: str | Path,
    mp: int = 1,
    dtype: str = "fp32",
    adapters: Sequence[str | Path] = (),
    log: Callable[[str], None] | None = print,
) -> Path:
    """Write `out_dir` (params.json, consolidated.NN.pth, tokenizer files) from an HF folder.

    adapters: PEFT LoRA/QLoRA adapter directories merged in order. Every check (config keys,
    tensor names and shapes, adapter shapes and targets, MP divisibility, tokenizer) runs before
    the first weight is read.
    """
    log = log or (lambda _message: None)
    check_dtype_and_mp(dtype, mp)
    hf_dir, out = Path(hf_dir), Path(out_dir)
    config_path = hf_dir / "config.json"
    config = read_json_object(config_path, "config.json")
    check_out_dir(out)
    start = time.perf_counter()
    args = config_to_args(config, str(config_path), log)
    if args.n_heads % mp or args.kv_heads % mp:
        raise CheckpointError(
            f"{config_path}: --mp {mp} must divide n_heads {args.n_heads} and n_kv_heads "
            f"{args.kv_heads}"
        )
    weights = open_weights(hf_dir, "model")
    plan, shapes = _plan(weights, args, hf_dir)
    merged = load_adapters(adapters, args)
    tmp = fresh_tmp_dir(out)
    try:
        copied = _copy_tokenizer(hf_dir, tmp, args)
        writer = ShardWriter(tmp, args, shapes, mp, DTYPES[dtype])
        numel = writer.rank_bytes() // torch.empty((), dtype=DTYPES[dtype]).element_size()
        largest = max(math.prod(weights.info[n].shape) for n in plan.values())
        log(
            f"{hf_dir.name}: {args.n_layers} layers, dim {args.dim}, heads {args.n_heads}/"
            f"{args.kv_heads} of {args.head_dim}, vocab {args.vocab_size}, rope "
            f"{(args.rope_scaling or {}).get('rope_type', 'default')}, tied "
            f"{args.tie_word_embeddings}; {len(plan)} weights ({_mib(weights.nbytes)}), "
            f"{len(merged)} adapter(s); largest tensor {_mib(largest * 4)} in fp32"
        )
        sizes = ", ".join(f"{k} {_mib(numel * v.itemsize)}" for k, v in DTYPES.items())
        log(f"each of {mp} rank(s): {numel:,} weights, {sizes}; stored as {dtype}")
        try:
            by_file = sorted(plan.items(), key=lambda item: str(weights.info[item[1]].file))
            for target, name in by_file:
                tensor = merge_hf(weights.read(name), target, merged)
                writer.write(target, to_meta_layout(target, tensor, args))
                del tensor
        except BaseException:
            writer.abort()
            raise
        writer.close()
        (tmp / "params.json").write_text(json.dumps(args.to_json(), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in out.iterdir())
    log(
        f"wrote {out} (mp {mp}, {dtype}, {_mib(size)}; {', '.join(copied)}) in {seconds:.1f} s "
        f"({weights.nbytes / 1e9 / max(seconds, 1e-9):.2f} GB/s read)"
    )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", type=Path, help="Hugging Face model folder (config.json, ...)")
    add_output_arguments(parser)
    parser.add_argument(
        "--adapter",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="PEFT LoRA/QLoRA adapter folder to merge (repeat: applied in order)",
    )


def run(args: argparse.Namespace) -> int:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    import_hf(
        args.hf_dir, args.out_dir, mp=args.mp, dtype=args.dtype, adapters=args.adapter, log=log
    )
    return 0
