"""Tiny random Hugging Face models (transformers, no downloads) for the import and LoRA tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from salmon_wf.model.tiny import TINY_VOCAB

# Small original context so the llama3 rule's cut-offs (L/4 = 4, L/1 = 16 positions) fall inside
# the head's wavelengths (2*pi ... ~2e4): all three bands of frequencies occur.
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
BASE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "vocab_size": TINY_VOCAB,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
}


def hf_config(family: str, **overrides: Any) -> Any:
    import transformers

    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
    }
    return classes[family](**{**BASE, **overrides})


def random_hf_model(family: str, seed: int = 0, **overrides: Any) -> Any:
    """An eval-mode fp32 model with weights of real scale (biases and norms non-trivial)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family, **overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.5 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
    return model.eval()


def save_hf(
    model: Any, folder: Path, tokenizer_dir: Path, max_shard_size: str | None = None
) -> Path:
    """save_pretrained (safetensors; sharded with an index when max_shard_size is given) plus the
    tiny sentencepiece tokenizer (the configs use its vocabulary size)."""
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    shutil.copy(tokenizer_dir / "tokenizer.model", folder / "tokenizer.model")
    return folder


def hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def hf_greedy(model: Any, ids: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()
