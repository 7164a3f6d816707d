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
        head = f"{meta_prompt}\n" if meta_prompt else ""
        return f"{head}{user}\n\n### Dromedary\n"
    if style == "chatml":
        system = f"<|im_start|>system\n{meta_prompt}<|im_end|>\n" if meta_prompt else ""
        return f"{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if style == "plain":
        return f"{meta_prompt}{user}"
    raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
