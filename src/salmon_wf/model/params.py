"""Model hyper-parameters as stored in Meta's `params.json`, with the keys later LLaMAs added."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from salmon_wf.errors import CheckpointError

REQUIRED_KEYS = ("dim", "n_layers", "n_heads")
# Keys of Meta-style params.json files that do not change the maths (skipped): Meta's generation
# batch size (the engine batches by itself).
HARMLESS_KEYS = ("max_batch_size",)
# Meta's own rotary-scaling keys (LLaMA 3.1+), turned into `rope_scaling` when read.
META_ROPE_KEYS = ("use_scaled_rope", "rope_scaling_factor")
# Meta's LLaMA 3.1 scaling constants (params.json says only `use_scaled_rope: true`). LLaMA 3.2
# 1B/3B were trained with factor 32 (their HF configs say so) but Meta's params.json does not:
# such a directory needs `"rope_scaling_factor": 32` (or an HF import, which reads the config).
META_LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass(frozen=True)
class ModelArgs:
    """LLaMA-family shape. Missing optional keys default; a key neither known nor listed in
    HARMLESS_KEYS is an error (it may change the maths)."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    vocab_size: int = -1  # -1 (Meta LLaMA-1): taken from the tokenizer
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None  # explicit FFN size; overrides multiple_of / multiplier
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_word_embeddings: bool = False
    head_dim: int | None = None  # explicit head size (Mistral-Nemo: n_heads * head_dim != dim)
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3" | "linear", ...}
    qkv_bias: bool = False  # biases on wq/wk/wv (Qwen2; HF llama `attention_bias`)
    o_bias: bool = False  # bias on wo (HF llama `attention_bias`)
    sliding_window: int | None = None  # Mistral: equals full attention up to this context
    # Dromedary's "expanded" shards (65B/70B on MP 3, 5, 6, 12...): q/k/v widened with whole zero
    # heads to qkv_dim, the FFN zero-padded to ffn_dim, embedding/output rows to model_vocab_size.
    qkv_dim: int | None = None
    ffn_dim: int | None = None
    model_vocab_size: int | None = None

    @property
    def attn_heads(self) -> int:
        """Query heads the weights hold: n_heads, or the zero-padded heads of qkv_dim."""
        if self.qkv_dim is not None:
            return self.qkv_dim // self.head_dim
        return self.n_heads

    @property
    def kv_heads(self) -> int:
        if self.qkv_dim is not None:  # expanded shards repeat KV: plain multi-head attention
            return self.attn_heads
        return self.n_kv_heads or self.n_heads

    @property
    def vocab_rows(self) -> int:
        """Embedding / LM-head rows; rows past vocab_size are padding and never a token."""
        return self.model_vocab_size or self.vocab_size

    def __post_init__(self) -> None:
        if self.head_dim is None and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width: Meta's rule (2/3 of 4*dim, scaled, rounded up to multiple_of)."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def with_vocab(self, vocab_size: int) -> ModelArgs:
        return ModelArgs(**{**asdict(self), "vocab_size": vocab_size})

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if out.get("head_dim") == self.dim // self.n_heads:
            out.pop("head_dim")  # implied: params.json stays Meta's
        for key in ("qkv_bias", "o_bias"):
            if not out[key]:
                out.pop(key)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "params.json") -> ModelArgs:
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise CheckpointError(f"{source}: missing required key(s) {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known - set(HARMLESS_KEYS) - set(META_ROPE_KEYS))
        if unknown:
            raise CheckpointError(
                f"{source}: unsupported key(s) {', '.join(unknown)} (they may change the model's "
                "maths; known keys are ModelArgs' fields, harmless ones: "
                f"{', '.join(HARMLESS_KEYS)})"
            )
        values = {k: v for k, v in raw.items() if k in known}
        values["rope_scaling"] = _rope_scaling(raw, source)
        args = cls(**values)
        if args.n_heads < 1 or args.n_layers < 0 or args.dim < 1:
            raise CheckpointError(f"{source}: dim, n_heads must be positive, n_layers >= 0")
        if "head_dim" not in raw and args.dim % args.n_heads:
            raise CheckpointError(
                f"{source}: dim {args.dim} not divisible by n_heads {args.n_heads}"
            )
        if args.attn_heads % args.kv_heads:
            raise CheckpointError(
                f"{source}: n_heads {args.n_heads} not divisible by n_kv_heads {args.kv_heads}"
            )
        _check_expanded(args, source)
        if args.sliding_window is not None and args.sliding_window < 1:
            raise CheckpointError(f"{source}: sliding_window {args.sliding_window} must be >= 1")
        return args

    @classmethod
    def load(cls, path: str | Path) -> ModelArgs:
        path = Path(path)
        return cls.from_dict(read_json_object(path, "params.json"), str(path))


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; a missing, malformed or non-object file names the path."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return raw


def _check_expanded(args: ModelArgs, source: str) -> None:
    """Dromedary's padded sizes must hold the real model: whole heads, no shrinking."""
    if args.qkv_dim is not None:
        if args.n_kv_heads not in (None, args.n_heads):
            raise CheckpointError(
                f"{source}: qkv_dim with n_kv_heads {args.n_kv_heads}: expanded shards repeat "
                f"the KV heads to n_heads {args.n_heads}"
            )
        if args.qkv_dim < args.dim or args.qkv_dim % args.head_dim:
            raise CheckpointError(
                f"{source}: qkv_dim {args.qkv_dim} must be at least dim {args.dim} and a "
                f"multiple of the head size {args.head_dim}"
            )
    if args.ffn_dim is not None and args.ffn_dim < 1:
        raise CheckpointError(f"{source}: ffn_dim {args.ffn_dim} must be positive")
    if args.model_vocab_size is not None and args.model_vocab_size < args.vocab_size:
        raise CheckpointError(
            f"{source}: model_vocab_size {args.model_vocab_size} is below vocab_size "
            f"{args.vocab_size}"
        )


def check_rope_scaling(scaling: dict[str, Any], source: str, key: str) -> dict[str, Any]:
    """A supported rotary scaling, normalised; anything else names the file and key.

    Only "linear" and "llama3" are implemented; "dynamic", "yarn", "longrope"... change the
    frequencies in ways this engine does not reproduce, so they are refused, never ignored.
    """
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALING_KEYS:
        raise CheckpointError(
            f"{source}: {key} rope_type {kind!r} is not supported (supported: "
            f"{', '.join(ROPE_SCALING_KEYS)})"
        )
    needed = ROPE_SCALING_KEYS[kind]
    extra = sorted(set(scaling) - set(needed) - {"rope_type", "type", "rope_theta"})
    missing = [k for k in needed if k not in scaling]
    if missing or extra:
        raise CheckpointError(
            f"{source}: {key} of type {kind!r} needs exactly {', '.join(needed)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unsupported {', '.join(extra)}" if extra else "")
        )
    out: dict[str, Any] = {"rope_type": kind}
    for k in needed:
        value = scaling[k]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"{source}: {key}.{k} must be a positive number, got {value!r}")
        out[k] = int(value) if k == "original_max_position_embeddings" else float(value)
    if kind == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise CheckpointError(f"{source}: {key}: high_freq_factor must exceed low_freq_factor")
    return out


def _rope_scaling(raw: dict[str, Any], source: str) -> dict[str, Any] | None:
    """`rope_scaling` as written by us, or Meta's `use_scaled_rope` (+ `rope_scaling_factor`)."""
    if raw.get("rope_scaling") is not None:
        if raw.get("use_scaled_rope"):
            raise CheckpointError(f"{source}: both rope_scaling and use_scaled_rope are set")
        if not isinstance(raw["rope_scaling"], dict):
            raise CheckpointError(f"{source}: rope_scaling must be an object")
        return check_rope_scaling(raw["rope_scaling"], source, "rope_scaling")
    if raw.get("use_scaled_rope"):
        scaling = dict(META_LLAMA3_SCALING)
        if raw.get("rope_scaling_factor") is not None:
            scaling["factor"] = raw["rope_scaling_factor"]
        return check_rope_scaling(scaling, source, "use_scaled_rope")
    if raw.get("rope_scaling_factor") is not None:
        raise CheckpointError(f"{source}: rope_scaling_factor without use_scaled_rope: true")
    return None
