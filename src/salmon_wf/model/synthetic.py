"""Random Hugging Face LLaMA folders of a chosen size, and a child process's peak memory.

Used by the streaming-memory test and bench/import_hf.py: a multi-gigabyte checkpoint is written
one layer per safetensors file (with model.safetensors.index.json), so making it never holds
more than a layer in memory, and the import under test runs in a fresh interpreter whose own
peak is read back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch


def llama_config(dim: int, layers: int, heads: int, ffn: int, vocab: int) -> dict:
    """A plain LlamaForCausalLM config.json (multi-head attention, untied head)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dim,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": ffn,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def write_random_checkpoint(folder: Path, config: dict, tokenizer: Path, seed: int = 0) -> int:
    """An fp32 sharded safetensors checkpoint for `config`, one file per layer; returns bytes.

    tokenizer: a tokenizer.model or tokenizer.json copied in (its vocabulary must not exceed
    the config's).
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy(tokenizer, folder / tokenizer.name)
    dim, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    generator = torch.Generator().manual_seed(seed)
    groups: list[dict[str, tuple[int, ...]]] = [
        {"model.embed_tokens.weight": (vocab, dim), "model.norm.weight": (dim,)},
        {"lm_head.weight": (vocab, dim)},
    ]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        groups.append(
            {p + f"self_attn.{x}_proj.weight": (dim, dim) for x in "qkvo"}
            | {p + f"mlp.{x}_proj.weight": (ffn, dim) for x in ("gate", "up")}
            | {p + "mlp.down_proj.weight": (dim, ffn)}
            | {p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,)}
        )
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: torch.randn(s, generator=generator) * 0.02 for n, s in group.items()}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map |= dict.fromkeys(group, file)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def child_peak_rss(code: str) -> int:
    """Peak resident bytes of a fresh Python child running `code`: its VmHWM when it ends.

    Not ru_maxrss (getrusage RUSAGE_CHILDREN or wait4): Linux records the forked image's
    high-water mark into the child's ru_maxrss at exec, so a child of a large process (pytest
    with torch and transformers loaded) reports its parent's size. VmHWM belongs to the child's
    own address space after exec. Linux only.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    report = "\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    done = subprocess.run(
        [sys.executable, "-c", code + report], env=env, capture_output=True, text=True, check=True
    )
    line = done.stdout.strip().splitlines()[-1]  # "VmHWM:   123456 kB"
    return int(line.split()[1]) * 1024
