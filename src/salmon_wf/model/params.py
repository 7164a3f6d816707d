"""Model hyper-parameters as stored in Meta's `params.json`, with the keys later LLaMAs added."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("dim", "n_layers", "n_heads")


class CheckpointError(ValueError):
    """A model directory that cannot be loaded: raised before any compute, naming the file."""


@dataclass(frozen=True)
class ModelArgs:
    """LLaMA-family shape. Unknown params.json keys are ignored; missing optional keys default."""

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

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

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
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "params.json") -> ModelArgs:
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise CheckpointError(f"{source}: missing required key(s) {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        args = cls(**{k: v for k, v in raw.items() if k in known})
        if args.dim % args.n_heads:
            raise CheckpointError(
                f"{source}: dim {args.dim} not divisible by n_heads {args.n_heads}"
            )
        if args.attn_heads % args.kv_heads:
            raise CheckpointError(
                f"{source}: n_heads {args.n_heads} not divisible by n_kv_heads {args.kv_heads}"
            )
        _check_expanded(args, source)
        return args

    @classmethod
    def load(cls, path: str | Path) -> ModelArgs:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: params.json not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_dict(raw, str(path))


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
