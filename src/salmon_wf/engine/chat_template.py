"""The tokenizer's own chat template (Jinja, from tokenizer_config.json), as chat models expect.

Llama-3-Instruct, Mistral, Qwen2 and most HF chat models define their prompt format only as a
Jinja template. It is rendered the way Hugging Face renders it, so prompts match what the model
was tuned on: a sandboxed immutable environment (templates are data from the model folder, not
code to trust), trim_blocks and lstrip_blocks, the `raise_exception` helper, the special-token
texts as variables, `add_generation_prompt=True`. There is no `strftime_now`: a template that
would print today's date falls back to its own default, so prompts do not change by the day.

Templates usually write the BOS text themselves ("<|begin_of_text|>", "<s>"). `encode` turns a
leading BOS text into the tokenizer's BOS id (a sentencepiece model would otherwise spell "<s>"
as three pieces) and never adds a second one.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from salmon_wf.errors import ChatTemplateError
from salmon_wf.model.tokenizer import Tokenizer

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"  # newer HF folders keep the template in its own file
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    """JSON as chat models saw it in training: non-ASCII and <, >, & left as they are."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.globals["raise_exception"] = _raise_exception
    env.filters["tojson"] = _tojson
    return env


def _content(value: object) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # the Jinja text
    path: Path  # where it came from (for messages)
    special: dict[str, str]  # bos_token, eos_token, ... -> their text

    @classmethod
    def load(cls, folder: str | Path) -> ChatTemplate:
        """The template of the tokenizer in `folder`: chat_template.jinja, else the
        `chat_template` of tokenizer_config.json (a string, or a list of named templates of
        which "default" is used)."""
        folder = Path(folder)
        config_path = folder / CONFIG_FILE
        config: dict[str, Any] = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ChatTemplateError(f"{config_path}: not valid JSON ({exc})") from exc
        special = {k: _content(config.get(k)) for k in SPECIAL_KEYS}
        jinja_path = folder / TEMPLATE_FILE
        if jinja_path.is_file():
            return cls(jinja_path.read_text(encoding="utf-8"), jinja_path, special)
        source = config.get("chat_template")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError(
                f"{folder}: no chat template ({TEMPLATE_FILE}, or `chat_template` in "
                f"{CONFIG_FILE}); prompt style chat_template needs one (or use dromedary/chatml)"
            )
        return cls(source, config_path, special)

    @functools.cached_property
    def _compiled(self) -> jinja2.Template:
        try:
            return _environment().from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"{self.path}: chat template does not parse ({exc})") from exc

    def _render(self, messages: list[dict[str, str]]) -> str:
        return self._compiled.render(messages=messages, add_generation_prompt=True, **self.special)

    def render(self, user: str, system: str = "") -> str:
        """The prompt for one user turn, with `system` (the meta prompt) as system message."""
        messages = [{"role": "user", "content": user}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        try:
            return self._render(messages)
        except jinja2.TemplateError as exc:
            if system:
                try:
                    self._render(messages[1:])
                except jinja2.TemplateError:
                    pass
                else:
                    raise ChatTemplateError(
                        f"{self.path}: the chat template rejects a system message ({exc}); "
                        "run with an empty meta_prompt, or use another prompt style"
                    ) from exc
            raise ChatTemplateError(f"{self.path}: chat template failed ({exc})") from exc

    def encode(self, tokenizer: Tokenizer, text: str) -> list[int]:
        """Token ids of a rendered prompt: BOS exactly when the template wrote it, once."""
        bos = self.special["bos_token"]
        if bos and tokenizer.bos_id is not None and text.startswith(bos):
            return tokenizer.encode(text[len(bos) :], bos=True)
        return tokenizer.encode(text)


def template_of(tokenizer: Tokenizer) -> ChatTemplate:
    """The chat template shipped beside `tokenizer`'s file (read once per file)."""
    return _load_cached(str(tokenizer.path.parent))


@functools.cache
def _load_cached(folder: str) -> ChatTemplate:
    return ChatTemplate.load(folder)
