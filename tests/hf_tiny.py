"""Small Hugging Face model folders built in the tests (no downloads): a byte-level BPE
tokenizer.json with chat special tokens, and a random LlamaForCausalLM with a PEFT LoRA adapter."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>")
LLAMA3_SPECIALS += ("<|end_header_id|>", "<|eot_id|>")


def corpus() -> list[str]:
    text = resources.files("salmon_wf.resources").joinpath("tiny_corpus.txt").read_text("utf-8")
    return text.splitlines()


def write_tokenizer(
    folder: Path,
    specials: tuple[str, ...] = LLAMA3_SPECIALS,
    bos: str | None = "<|begin_of_text|>",
    eos: str = "<|eot_id|>",
    chat_template: str | None = None,
    vocab_size: int = 400,
) -> Path:
    """tokenizer.json (byte-level BPE trained on the tiny corpus) + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.save(str(folder / "tokenizer.json"))
    config: dict = {"bos_token": bos, "eos_token": eos, "add_bos_token": bos is not None}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder / "tokenizer.json"


# Llama-2-chat's shape: the system message inside the first [INST], BOS written by the template.
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '[INST] <<SYS>>\\n' + message['content'] + "
    "'\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{% if loop.index0 == 0 %}{{ '[INST] ' }}{% endif %}{{ message['content'] + ' [/INST]' }}"
    "{% endif %}{% endfor %}"
)


def write_hf_llama(meta_dir: Path, hf_dir: Path) -> Path:
    """The Meta-layout model in `meta_dir` as an HF LlamaForCausalLM folder (safetensors) with
    its sentencepiece tokenizer and a Llama-2-style chat template."""
    from salmon_wf.model.checkpoint import load_rank_state
    from salmon_wf.model.hf_export import to_hf_llama
    from salmon_wf.model.params import ModelArgs

    args = ModelArgs.load(meta_dir / "params.json")
    model = to_hf_llama(load_rank_state(meta_dir, args, 0, 1), args)
    model.save_pretrained(hf_dir, safe_serialization=True)
    (hf_dir / "tokenizer.model").write_bytes((meta_dir / "tokenizer.model").read_bytes())
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "add_bos_token": True,
        "chat_template": LLAMA2_TEMPLATE,
    }
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return hf_dir


def write_lora_adapter(hf_dir: Path, adapter_dir: Path, seed: int = 0) -> Path:
    """A PEFT LoRA adapter on q_proj/v_proj with random (non-zero) A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(hf_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(adapter_dir)
    return adapter_dir
