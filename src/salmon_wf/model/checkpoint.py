"""Meta-layout checkpoints: `params.json` + `consolidated.NN.pth`, one file per model-parallel rank.

Loading reshards when the checkpoint's MP differs from the world size: every parallel weight is
concatenated along its split dimension and re-split for this rank. All checks (files present,
keys, shapes) run before any weight is copied into the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from salmon_wf.errors import CheckpointError, ConfigError
from salmon_wf.model.params import ModelArgs

# Split dimension of each parallel weight in Meta's layout (None = replicated on every rank).
_COLUMN = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
_ROW = ("attention.wo", "feed_forward.w2")
IGNORED_KEYS = ("rope.freqs",)
_SHARD_FILE = re.compile(r"consolidated\.(\d+)\.pth$")
_REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")


def load_weights(file: Path) -> dict[str, torch.Tensor]:
    """A name -> tensor file read with torch.load(weights_only=True, mmap=True).

    torch's own errors for a truncated or foreign file ("mmap can only be used with files saved
    with ...", zip and unpickler errors of many types) do not name the file: they are wrapped.
    """
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle / zip / mmap errors come in many types
        refused = _REFUSED.search(str(exc))
        if refused is not None:  # a pickled object weights_only will not build: never run it
            raise CheckpointError(
                "refused by torch.load(weights_only=True): it holds a pickled object, not only "
                f"tensors ({refused.group(1)} is not an allowed global)",
                file=file,
            ) from exc
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise CheckpointError(
            f"cannot load with torch.load(weights_only=True, mmap=True) ({first or type(exc)})",
            file=file,
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError("expected a dict of name -> tensor", file=file)
    return state


def shard_dim(name: str) -> int | None:
    if name.endswith(".bias") and any(f".{r}." in name for r in _ROW):
        return None  # a row-parallel layer's bias is added after the sum: replicated
    if name == "output.weight" or any(f".{c}." in name for c in _COLUMN):
        return 0
    if name == "tok_embeddings.weight" or any(f".{r}." in name for r in _ROW):
        return 1
    return None


def embedding_split(args: ModelArgs, world: int) -> int:
    """Split dim of the embedding over `world` ranks: Meta's (by dim) when it divides, else by
    vocabulary row (Dromedary's MP 12 of LLaMA-65B: 8192 is not a multiple of 12)."""
    return 1 if args.dim % world == 0 else 0


def split_dim(name: str, args: ModelArgs, world: int) -> int | None:
    """Split dim of weight `name` over `world` ranks (None: replicated)."""
    return embedding_split(args, world) if name == "tok_embeddings.weight" else shard_dim(name)


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Full (unsharded) shape of every weight the model needs, padded rows included."""
    hd, ffn, rows = args.head_dim, args.ffn_hidden_dim, args.vocab_rows
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (rows, args.dim),
        "norm.weight": (args.dim,),
        "output.weight": (rows, args.dim),
    }
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attention.wq.weight": (args.attn_heads * hd, args.dim),
            p + "attention.wk.weight": (args.kv_heads * hd, args.dim),
            p + "attention.wv.weight": (args.kv_heads * hd, args.dim),
            p + "attention.wo.weight": (args.dim, args.attn_heads * hd),
            p + "feed_forward.w1.weight": (ffn, args.dim),
            p + "feed_forward.w2.weight": (args.dim, ffn),
            p + "feed_forward.w3.weight": (ffn, args.dim),
            p + "attention_norm.weight": (args.dim,),
            p + "ffn_norm.weight": (args.dim,),
        }
        if args.qkv_bias:
            shapes |= {
                p + "attention.wq.bias": (args.attn_heads * hd,),
                p + "attention.wk.bias": (args.kv_heads * hd,),
                p + "attention.wv.bias": (args.kv_heads * hd,),
            }
        if args.o_bias:
            shapes[p + "attention.wo.bias"] = (args.dim,)
    return shapes


def shard_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("consolidated.*.pth"))
    if not files:
        raise CheckpointError(f"{model_dir}: no consolidated.NN.pth checkpoint files")
    numbers = [
        int(_SHARD_FILE.search(f.name).group(1)) for f in files if _SHARD_FILE.search(f.name)
    ]
    if sorted(numbers) != list(range(len(files))):
        raise CheckpointError(
            f"{model_dir}: checkpoint files must be numbered consolidated.00..{len(files) - 1:02d}"
            f".pth, found {[f.name for f in files]}"
        )
    return files


def save_checkpoint(
    state_dict: dict[str, torch.Tensor], args: ModelArgs, out_dir: str | Path, mp: int = 1
) -> None:
    """Write full (unsharded) weights as `mp` Meta-layout shards plus params.json."""
    out = Path(out_dir)
    if mp < 1:
        raise ConfigError(f"must be at least 1, got {mp}", field="--mp")
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v for k, v in state_dict.items() if k not in IGNORED_KEYS}
    if args.tie_word_embeddings:
        weights.pop("output.weight", None)
    for old in out.glob("consolidated.*.pth"):
        old.unlink()
    for rank in range(mp):
        shard = {}
        for name, tensor in weights.items():
            dim = embedding_split(args, mp) if name == "tok_embeddings.weight" else shard_dim(name)
            if dim is not None:
                if tensor.shape[dim] % mp:
                    raise CheckpointError(
                        f"weight '{name}': dim {dim} of {tuple(tensor.shape)} not divisible by "
                        f"MP {mp}",
                        file=out,
                    )
                tensor = tensor.chunk(mp, dim=dim)[rank]
            shard[name] = tensor.contiguous().clone()
        torch.save(shard, out / f"consolidated.{rank:02d}.pth")
    (out / "params.json").write_text(json.dumps(args.to_json(), indent=2) + "\n")


def load_rank_state(
    model_dir: str | Path, args: ModelArgs, rank: int, world: int
) -> dict[str, torch.Tensor]:
    """This rank's weights, validated and resharded from whatever MP the files were saved with."""
    model_dir = Path(model_dir)
    files = shard_files(model_dir)
    shards = [load_weights(f) for f in files]
    ckpt_mp = len(files)
    expected = expected_shapes(args)
    if args.tie_word_embeddings:
        source_names = {k: k for k in expected} | {"output.weight": "tok_embeddings.weight"}
    else:
        source_names = {k: k for k in expected}
    for src in sorted(set(source_names.values())):  # the same name named every run
        for f, shard in zip(files, shards, strict=True):
            if src not in shard:
                raise CheckpointError(f"{f}: missing weight '{src}'")

    def full_dim(src: str) -> int | None:
        """Split dim in the files; the embedding may be split by dim (LLaMA 1/2) or by vocab
        (Dromedary; its slices are rounded up to a multiple of 8, so the last may be shorter)."""
        dim = shard_dim(src)
        if src == "tok_embeddings.weight" and ckpt_mp > 1:
            return 0 if shards[0][src].shape[-1] == args.dim else 1
        return dim

    state: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        src = source_names[name]
        pieces = [s[src] for s in shards]
        dim_in_files = full_dim(src) if ckpt_mp > 1 else None
        if dim_in_files is None:
            for f, piece in zip(files[1:], pieces[1:], strict=True):
                if piece.shape != pieces[0].shape:
                    raise CheckpointError(
                        f"{f}: replicated weight '{src}' has shape "
                        f"{tuple(piece.shape)}, expected {tuple(pieces[0].shape)}"
                    )
            pieces = pieces[:1]
        found = _joined_shape(pieces, dim_in_files)
        if found != shape:
            raise CheckpointError(
                f"{model_dir}: weight '{src}' has shape {found} "
                f"across {ckpt_mp} file(s), "
                f"params.json implies {shape}"
            )
        dim = embedding_split(args, world) if name == "tok_embeddings.weight" else shard_dim(name)
        if dim is None or world == 1:
            state[name] = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim_in_files)
            continue
        if shape[dim] % world:
            raise CheckpointError(
                f"weight '{name}': dim {dim} of {shape} not divisible by world size {world}",
                file=model_dir,
            )
        size = shape[dim] // world
        state[name] = _rank_slice(pieces, dim_in_files, dim, rank * size, size)
    return state


def _joined_shape(pieces: list[torch.Tensor], dim: int | None) -> tuple[int, ...]:
    """Shape of the file pieces joined along `dim` (None: one replicated piece)."""
    shape = list(pieces[0].shape)
    if dim is None:
        return tuple(shape)
    for p in pieces[1:]:
        if [n for i, n in enumerate(p.shape) if i != dim] != [
            n for i, n in enumerate(shape) if i != dim
        ]:
            return tuple(p.shape)
    shape[dim] = sum(p.shape[dim] for p in pieces)
    return tuple(shape)


def _rank_slice(
    pieces: list[torch.Tensor], file_dim: int | None, dim: int, start: int, size: int
) -> torch.Tensor:
    """[start, start + size) along `dim` of the pieces joined along `file_dim`, built from only
    the parts of the (memory-mapped) files that fall in it: a rank never holds the whole tensor.

    The files' slices need not line up with the ranks' (Dromedary rounds them to multiples of 8,
    the last one shorter; another MP cuts elsewhere)."""
    if file_dim is None:
        return pieces[0].narrow(dim, start, size)
    if file_dim != dim:
        return torch.cat([p.narrow(dim, start, size) for p in pieces], dim=file_dim)
    parts, offset = [], 0
    for p in pieces:
        lo, hi = max(start, offset), min(start + size, offset + p.shape[dim])
        if lo < hi:
            parts.append(p.narrow(dim, lo - offset, hi - lo))
        offset += p.shape[dim]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
