"""The project's error types: a user's input that cannot be used, located in its file.

Every `salmon-wf` command ends a `SalmonError` with one line,
`salmon-wf <command>: error: <file>[ line N][: field]: <what>`, and a non-zero exit (cli.main),
so each type carries where the problem is as attributes as well as in its message. Anything
else that escapes a command is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class SalmonError(ValueError):
    """A user error: `file`, `line` and `field` locate it (each None where it does not apply).

    Built from its parts, the message is `<file>[ line N][: field]: <what>`; a command flag has
    no file (`--mp: must be at least 1`). A message written whole (call sites whose text already
    starts with the file) is kept as it is.
    """

    def __init__(
        self,
        what: str,
        file: str | os.PathLike[str] | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.what = what
        self.file = None if file is None else os.fspath(file)
        self.line, self.field = line, field
        super().__init__(self.render())

    def render(self) -> str:
        """`<file>[ line N][: field]: <what>`; a setting with no file is `<field>: <what>`."""
        parts = [] if self.file is None else [self.file]
        if parts and self.line is not None:
            parts[0] += f" line {self.line}"
        if self.field is not None:
            parts.append(self.field)
        return ": ".join([*parts, self.what])


class CheckpointError(SalmonError):
    """A model directory or weight file that cannot be loaded, found before any compute."""


class RecordError(SalmonError):
    """A malformed input record (JSONL line, shard summary)."""


class OasstFormatError(RecordError):
    """Input that is not OASST1: the file, the line or parquet row, and the field."""


class PrincipleError(SalmonError):
    """A malformed principle file: the entry and field."""


class TemplateError(SalmonError):
    """A judging template or meta prompt that cannot be used."""


class ChatTemplateError(TemplateError):
    """A tokenizer's chat template that is missing, malformed, or refuses the conversation."""


class ConfigError(SalmonError):
    """A setting (config key or command flag) with a value the command cannot run with."""


class LanguageModelError(ConfigError):
    """A language-id model path that cannot be used (missing, unreadable, not fastText)."""
