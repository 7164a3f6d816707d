"""Build one rank's model from a model directory: validate everything, then allocate and copy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from salmon_wf.errors import CheckpointError, ConfigError
from salmon_wf.model.checkpoint import load_rank_state
from salmon_wf.model.cpu_packing import pack_projections
from salmon_wf.model.dtypes import COMPUTE_DTYPES, DtypeChoice, resolve_dtype
from salmon_wf.model.lora import load_adapters, merge_into_rank_state
from salmon_wf.model.parallel import ParallelContext
from salmon_wf.model.params import ModelArgs
from salmon_wf.model.tokenizer import Tokenizer, load_tokenizer
from salmon_wf.model.transformer import Transformer, default_dtype


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    args: ModelArgs
    model_dir: Path
    # The compute dtype and why (auto's pick on this machine, or "set explicitly").
    dtype: DtypeChoice | None = None


def resolve_args(model_dir: Path, tokenizer: Tokenizer) -> ModelArgs:
    """params.json with the vocabulary size settled; padded rows (model_vocab_size) excluded.

    A tokenizer larger than the model's real vocabulary would emit ids the model never learned.
    """
    args = ModelArgs.load(model_dir / "params.json")
    real = args.vocab_size if args.vocab_size > 0 else args.vocab_rows
    if real > 0 and tokenizer.vocab_size > real:
        raise CheckpointError(
            f"{tokenizer.path}: tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"embedding has {real} rows ({model_dir / 'params.json'})"
        )
    if args.vocab_size <= 0:
        args = args.with_vocab(tokenizer.vocab_size)
    return args


def build_model(args: ModelArgs, dtype: torch.dtype, device: torch.device) -> Transformer:
    """An uninitialised Transformer of `dtype` with every parameter on `device`.

    fairscale's parallel layers allocate their weights with the legacy `torch.Tensor(...)`
    constructor, which ignores the default-device context (found on an H100: the embedding and
    every projection stayed on the CPU), so the model is moved after it is built.
    """
    with default_dtype(dtype), torch.device(device):
        model = Transformer(args)
    return model.to(device)


def load_model(
    model_dir: str | Path,
    ctx: ParallelContext,
    dtype: str = "fp32",
    tokenizer_path: str | Path | None = None,
    max_seq_len: int | None = None,
    adapters: Sequence[str | Path] = (),
) -> LoadedModel:
    """Load this rank's shard of the model in `model_dir` (any checkpoint MP, any world size).

    adapters: PEFT LoRA/QLoRA adapter folders (HF module names) merged, in order, into this
    rank's weights (lora.py); checked against the model before any weight is read. dtype: a
    DTYPES name or auto (dtypes.resolve_dtype: bf16 where the hardware has bf16 matrix units).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: model directory not found")
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"must be one of {COMPUTE_DTYPES}, got {dtype!r}", field="--dtype")
    choice = resolve_dtype(dtype, ctx.device)
    tokenizer = load_tokenizer(model_dir, tokenizer_path)
    args = resolve_args(model_dir, tokenizer)
    if max_seq_len is not None:
        args = ModelArgs(**{**args.__dict__, "max_seq_len": max_seq_len})
    merged = load_adapters(adapters, args)
    state = load_rank_state(model_dir, args, ctx.rank, ctx.world_size)
    merge_into_rank_state(state, args, merged, ctx.rank, ctx.world_size)
    try:
        model = build_model(args, choice.dtype, ctx.device)
    except CheckpointError as exc:  # the layers check the shape they are given: name its file
        if exc.file is not None:
            raise
        raise CheckpointError(exc.what, file=model_dir / "params.json") from exc
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(state[name])  # casts the stored dtype (fp32 for imports) to the compute one
    model.eval()
    pack_projections(model)  # bf16 on a CPU only: oneDNN's layout, once (cpu_packing.py)
    return LoadedModel(
        model=model, tokenizer=tokenizer, args=args, model_dir=model_dir, dtype=choice
    )
