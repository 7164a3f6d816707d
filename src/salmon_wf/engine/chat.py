"""Prompt styles: how an instruction (and an optional meta prompt) becomes model input text.

"dromedary" is SALMON's format (meta prompt, instruction, then the `### Dromedary` cue, so the
response is cut at the next "###"); "chatml" is the ChatML chat format of SmolLM2 and similar
chat models; "plain" passes the text through.
"""

from __future__ import annotations

STYLES = ("dromedary", "chatml", "plain")


def format_prompt(style: str, instruction: str, input_text: str = "", meta_prompt: str = "") -> str:
    user = instruction if not input_text else f"{instruction}\n\n{input_text}"
    if style == "dromedary":
        return dromedary_prompt(instruction, input_text, meta_prompt)
    if style == "chatml":
        system = f"<|im_start|>system\n{meta_prompt}<|im_end|>\n" if meta_prompt else ""
        return f"{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if style == "plain":
        return f"{meta_prompt}{user}"
    raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")


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
