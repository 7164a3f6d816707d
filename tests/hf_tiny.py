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
