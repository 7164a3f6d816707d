"""Prompt styles: how an instruction (and an optional meta prompt) becomes model input text.

"dromedary" is SALMON's format (meta prompt, instruction, then the `### Dromedary` cue, so the
response is cut at the next "###"); "chatml" is the ChatML chat format of SmolLM2 and similar
chat models; "plain" passes the text through; "chat_template" renders the tokenizer's own Jinja
template (Llama-3-Instruct, Mistral, Qwen...) with the meta prompt as system message.
"""

from __future__ import annotations

from salmon_wf.engine.chat_template import ChatTemplate, template_of
from salmon_wf.errors import ConfigError
from salmon_wf.model.tokenizer import Tokenizer

STYLES = ("dromedary", "chatml", "plain", "chat_template")


def format_prompt(
    style: str,
    instruction: str,
    input_text: str = "",
    meta_prompt: str = "",
    template: ChatTemplate | None = None,
) -> str:
    """The model input text; style chat_template needs `template` (chat_template.template_of)."""
    user = instruction if not input_text else f"{instruction}\n\n{input_text}"
    if style == "dromedary":
        return dromedary_prompt(instruction, input_text, meta_prompt)
    if style == "chatml":
        system = f"<|im_start|>system\n{meta_prompt}<|im_end|>\n" if meta_prompt else ""
        return f"{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if style == "plain":
        return f"{meta_prompt}{user}"
    if style == "chat_template":
        if template is None:
            raise ConfigError(
                "prompt style chat_template needs the tokenizer's chat template", field="--style"
            )
        return template.render(user, meta_prompt)
    raise ConfigError(f"must be one of {STYLES}, got {style!r}", field="--style")


def encode_chat(
    tokenizer: Tokenizer, instruction: str, input_text: str = "", meta_prompt: str = ""
) -> list[int]:
    """Token ids of style chat_template: BOS only where the template writes it, never twice."""
    template = template_of(tokenizer)
    text = format_prompt("chat_template", instruction, input_text, meta_prompt, template)
    return template.encode(tokenizer, text)


def dromedary_prompt(instruction: str, input_text: str = "", meta_prompt: str = "") -> str:
    """SALMON's sampler prompt, to the character (batch_generation.py, generate_dromedary_prompt).

    Meta prompt, instruction and input are stripped as SALMON strips them; the meta prompt line
    is there even when empty, as in the original; no newline follows the `### Dromedary` cue
    (the model writes it). BOS is the caller's: SALMON encodes with bos=True.
    """
    body = instruction.strip()
    if input_text.strip():
        body += "\n\n" + input_text.strip()
    return f"{meta_prompt.strip()}\n{body}\n\n### Dromedary"
