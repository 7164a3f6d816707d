"""PEFT LoRA / QLoRA adapters merged into the base weights: W' = W + scale * B @ A.

A QLoRA adapter has the same files as a LoRA one (it was trained against a 4-bit base); merging it
into the fp16/bf16/fp32 base is the usual way to deploy it. Merges run in fp32 before the weight
is cast to its stored dtype; several adapters are applied in the order given.

Two places merge: `salmon-wf import-hf --adapter` (HF base, HF layout, before the rotary
permutation) and `load_model(..., adapters=[...])` for a Meta-layout model directory (each rank
merges its own slice; B's q/k rows are permuted to Meta's interleaved layout first).

adapter_config.json: r, lora_alpha, target_modules (any of q/k/v/o/gate/up/down_proj, a list or
PEFT's regex string or "all-linear"), use_rslora (scale alpha / sqrt(r) instead of alpha / r),
fan_in_fan_out (a Conv1D-base option; PEFT turns it off for the nn.Linear projections of LLaMA
models, and the stored A/B are the same, so it changes nothing here), bias (must be "none").
Keys that only shape training or initialisation are skipped (HARMLESS_KEYS). Any other key whose
value turns a feature on (DoRA, rank/alpha patterns, modules_to_save, ...) is an error: the merge
would be wrong without it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salmon_wf.errors import CheckpointError
from salmon_wf.model.checkpoint import expected_shapes, split_dim
from salmon_wf.model.hf_export import halves_to_interleaved
from salmon_wf.model.hf_weights import TensorFiles, open_weights
from salmon_wf.model.params import ModelArgs, read_json_object

# HF projection -> Meta module (the names LoRA targets in a LLaMA-family model).
HF_TO_META = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.up_proj": "feed_forward.w3",
    "mlp.down_proj": "feed_forward.w2",
}
USED_KEYS = ("r", "lora_alpha", "target_modules", "use_rslora", "fan_in_fan_out", "bias")
# Keys that do not change a merged model: bookkeeping, and options of training or initialisation
# only (dropout, init schemes, which layers to create adapters on: the file says which exist).
HARMLESS_KEYS = (
    "auto_mapping",
    "base_model_name_or_path",
    "revision",
    "task_type",
    "peft_type",
    "peft_version",
    "inference_mode",
    "init_lora_weights",
    "lora_dropout",
    "layers_to_transform",
    "layers_pattern",
    "exclude_modules",
    "loftq_config",
    "eva_config",
    "corda_config",
    "lora_ga_config",
    "megatron_config",
    "megatron_core",
    "qalora_group_size",
    "ensure_weight_tying",
)
_LORA_KEY = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)"
    r"\.lora_([AB])(?:\.[\w-]+)?\.weight"
)


@dataclass
class Adapter:
    """One adapter's settings and where each (layer, module)'s A and B are."""

    path: Path
    scale: float
    rank: int
    tensors: TensorFiles
    # Meta weight name (layers.N.attention.wq.weight) -> (A key, B key)
    modules: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return self.tensors.files[0]

    def factors(self, meta_name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A [r, in], scale * B [out, r]) in fp32, HF row order; None if not targeted."""
        keys = self.modules.get(meta_name)
        if keys is None:
            return None
        a, b = (self.tensors.read(k).float() for k in keys)
        return a, b * self.scale


def _targets(config: dict[str, Any], path: Path) -> set[str]:
    """The HF projections (self_attn.q_proj, ...) target_modules selects in a LLaMA layer."""
    targets = config.get("target_modules")
    if targets == "all-linear":
        return set(HF_TO_META)
    if isinstance(targets, str):
        pattern = re.compile(targets)
        return {m for m in HF_TO_META if pattern.fullmatch(f"model.layers.0.{m}")}
    if not isinstance(targets, list) or not targets:
        raise CheckpointError(f"{path}: target_modules must be a non-empty list or a string")
    chosen = set()
    for target in targets:
        found = {m for m in HF_TO_META if m == target or m.endswith("." + target)}
        if not found:
            raise CheckpointError(
                f"{path}: target module '{target}' is not a projection this merge supports "
                f"({', '.join(m.split('.')[-1] for m in HF_TO_META)})"
            )
        chosen |= found
    return chosen


def read_config(path: Path) -> tuple[float, int, set[str]]:
    """(scale, r, targeted projections) from adapter_config.json, refusing what it cannot merge."""
    config = read_json_object(path, "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, value in config.items():
        if key in USED_KEYS or key in HARMLESS_KEYS:
            continue
        if value not in (None, False, {}, [], ""):
            raise CheckpointError(
                f"{path}: key '{key}' = {value!r} is not supported (it changes the merged "
                "weights and this merge does not implement it)"
            )
    if config.get("bias", "none") != "none":
        raise CheckpointError(
            f"{path}: bias {config['bias']!r} is not supported: only adapters trained with "
            'bias "none" (LoRA weights only) can be merged'
        )
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{path}: r must be a positive integer and lora_alpha a number")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return float(scale), r, _targets(config, path)


def load_adapter(adapter_dir: str | Path, args: ModelArgs) -> Adapter:
    """An adapter directory checked against a model of shape `args` (before any merge).

    Every LoRA tensor must belong to a targeted projection of an existing layer, come in A/B
    pairs of rank r, and fit the base weight: A [r, in], B [out, r].
    """
    folder = Path(adapter_dir)
    config_path = folder / "adapter_config.json"
    scale, r, targets = read_config(config_path)
    tensors = open_weights(folder, "adapter_model")
    adapter = Adapter(path=folder, scale=scale, rank=r, tensors=tensors)
    shapes = expected_shapes(args)
    pairs: dict[str, dict[str, str]] = {}
    for key in tensors.names:
        file = tensors.info[key].file
        match = _LORA_KEY.fullmatch(key)
        if not match:
            raise CheckpointError(
                f"{file}: tensor '{key}' is not a LoRA A/B weight of a LLaMA projection "
                "(embedding, LM-head, DoRA or bias adapters are not supported)"
            )
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        if module not in HF_TO_META:
            raise CheckpointError(f"{file}: tensor '{key}': unknown module '{module}'")
        if module not in targets:
            raise CheckpointError(
                f"{file}: tensor '{key}' is for {module}, which target_modules in "
                f"{config_path} does not list"
            )
        if layer >= args.n_layers:
            raise CheckpointError(
                f"{file}: tensor '{key}' is for layer {layer}; the model has {args.n_layers}"
            )
        meta = f"layers.{layer}.{HF_TO_META[module]}.weight"
        if which in pairs.setdefault(meta, {}):
            raise CheckpointError(f"{file}: two lora_{which} tensors for {module} of layer {layer}")
        pairs[meta][which] = key
    for meta in (name for name in shapes if name in pairs):  # the model's order
        pair = pairs[meta]
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{adapter.file}: {next(iter(pair.values()))} has no partner")
        out_dim, in_dim = shapes[meta]
        a_shape, b_shape = tensors.info[pair["A"]].shape, tensors.info[pair["B"]].shape
        if a_shape != (r, in_dim) or b_shape != (out_dim, r):
            raise CheckpointError(
                f"{adapter.file}: tensors '{pair['A']}' {a_shape} and '{pair['B']}' {b_shape} do "
                f"not fit the base weight {meta} {(out_dim, in_dim)} with r {r} (expected A "
                f"{(r, in_dim)}, B {(out_dim, r)}): an adapter for another model?"
            )
        adapter.modules[meta] = (pair["A"], pair["B"])
    if not adapter.modules:
        raise CheckpointError(f"{adapter.file}: no LoRA weights")
    return adapter


def load_adapters(adapter_dirs: Sequence[str | Path], args: ModelArgs) -> list[Adapter]:
    return [load_adapter(d, args) for d in adapter_dirs]


def merge_hf(weight: torch.Tensor, meta_name: str, adapters: Sequence[Adapter]) -> torch.Tensor:
    """A weight in HF layout with every adapter merged (fp32; the input itself when untouched)."""
    out = weight
    for adapter in adapters:
        found = adapter.factors(meta_name)
        if found is not None:
            a, b = found
            out = out.float() if out is weight else out
            out = out + b @ a
    return out


def _meta_b(b: torch.Tensor, meta_name: str, args: ModelArgs) -> torch.Tensor:
    """B's rows in Meta's rotary layout for wq / wk (HF keeps each head's halves apart)."""
    if meta_name.endswith("attention.wq.weight"):
        return halves_to_interleaved(b, args.n_heads)
    if meta_name.endswith("attention.wk.weight"):
        return halves_to_interleaved(b, args.kv_heads)
    return b


def merge_into_rank_state(
    state: dict[str, torch.Tensor],
    args: ModelArgs,
    adapters: Sequence[Adapter],
    rank: int,
    world: int,
) -> None:
    """Merge adapters into one rank's Meta-layout weights in place (load time).

    state holds this rank's slices (load_rank_state); each delta is computed for that slice only:
    B's rows of the slice for column-parallel weights, A's columns for row-parallel ones.
    """
    if adapters and (args.qkv_dim is not None or args.model_vocab_size is not None):
        raise CheckpointError("adapters cannot be merged into Dromedary's expanded shards")
    for adapter in adapters:
        for name in adapter.modules:
            a, b = adapter.factors(name)  # type: ignore[misc]
            b = _meta_b(b, name, args)
            dim = split_dim(name, args, world)
            if world > 1 and dim == 0:
                b = b.chunk(world, dim=0)[rank]
            elif world > 1 and dim == 1:
                a = a.chunk(world, dim=1)[rank]
            base = state[name]
            state[name] = (base.float() + b @ a).to(base.dtype)
