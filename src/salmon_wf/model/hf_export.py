"""Meta-layout weights -> a Hugging Face `LlamaForCausalLM` (parity tests and benchmarks).

HF keeps each head's rotary pairs split in halves where Meta interleaves them, so wq/wk rows are
permuted per head. transformers is a test/benchmark dependency only, imported lazily.
"""

from __future__ import annotations

from typing import Any

import torch

from salmon_wf.model.params import ModelArgs


def interleaved_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta -> HF rows of q/k (a weight [out, in], a bias [out] or a LoRA B [out, r])."""
    out_dim, rest = weight.shape[0], weight.shape[1:]
    per_head = weight.reshape(heads, out_dim // heads // 2, 2, *rest)
    return per_head.transpose(1, 2).reshape(weight.shape)


def halves_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF -> Meta: the inverse of interleaved_to_halves (each head's halves become pairs)."""
    out_dim, rest = weight.shape[0], weight.shape[1:]
    per_head = weight.reshape(heads, 2, out_dim // heads // 2, *rest)
    return per_head.transpose(1, 2).reshape(weight.shape)


def hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    names = {
        "attention.wv": "self_attn.v_proj",
        "attention.wo": "self_attn.o_proj",
        "feed_forward.w1": "mlp.gate_proj",
        "feed_forward.w2": "mlp.down_proj",
        "feed_forward.w3": "mlp.up_proj",
        "attention_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i in range(args.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        wq, wk = state[ours + "attention.wq.weight"], state[ours + "attention.wk.weight"]
        out[theirs + "self_attn.q_proj.weight"] = interleaved_to_halves(wq, args.n_heads)
        out[theirs + "self_attn.k_proj.weight"] = interleaved_to_halves(wk, args.kv_heads)
        for meta_name, hf_name in names.items():
            out[f"{theirs}{hf_name}.weight"] = state[f"{ours}{meta_name}.weight"]
    return out


def to_hf_llama(state: dict[str, torch.Tensor], args: ModelArgs) -> Any:
    """An eval-mode LlamaForCausalLM holding the same weights (fp32)."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        max_position_embeddings=args.max_seq_len,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(hf_state_dict(state, args), strict=False)
    if unexpected or any("rotary" not in m for m in missing):
        raise RuntimeError(f"HF export mismatch: missing {missing}, unexpected {unexpected}")
    return model
