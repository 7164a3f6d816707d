"""The aggregation's parameters (SALMON's values are the defaults) and the used dimensions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from salmon_wf.config import defaults
from salmon_wf.errors import ConfigError

DEFAULT_EXCLUDED = ("Overall Helpful", "Natural and Fluent", "Multilingual")


_SCHEMA = defaults("aggregate")  # SALMON's values, in the config schema


@dataclass(frozen=True)
class Settings:
    """Aggregation parameters; the defaults are the config schema's aggregate section."""

    seed: int = _SCHEMA["seed"]
    dimensions: tuple[str, ...] | None = _SCHEMA["dimensions"]  # None: all but DEFAULT_EXCLUDED
    passes: int = _SCHEMA["passes"]
    geometric_p: float = _SCHEMA["geometric_p"]
    max_principles: int = _SCHEMA["max_principles"]
    negation_prob: float = _SCHEMA["negation_prob"]
    ai_rule_prob: float = _SCHEMA["ai_rule_prob"]
    ai_phrase: str = _SCHEMA["ai_phrase"]
    noise: float = _SCHEMA["noise"]
    rule_noise: float = _SCHEMA["rule_noise"]
    language_rule: bool = _SCHEMA["language_rule"]
    langid_max_chars: int = _SCHEMA["langid_max_chars"]  # data/langid.py's DEFAULT_MAX_CHARS
    langid_model: str | None = _SCHEMA["langid_model"]  # None or "": the bundled lite lid.176.ftz

    def check(self) -> None:
        for name in ("passes", "max_principles", "langid_max_chars"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=flag)
        if not 0 < self.geometric_p <= 1:
            raise ConfigError(f"must be in (0, 1], got {self.geometric_p}", field="--geometric-p")
        for name in ("negation_prob", "ai_rule_prob", "noise", "rule_noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(
                    f"must be in [0, 1], got {getattr(self, name)}",
                    field="--" + name.replace("_", "-"),
                )
        if not self.ai_phrase:
            raise ConfigError("must not be empty", field="--ai-phrase")


def resolve_dimensions(known: Sequence[str], requested: Sequence[str] | None) -> tuple[str, ...]:
    """Used dimensions in principle-file order (so the order they were listed in is irrelevant).

    `requested` entries may be comma lists; None means all but DEFAULT_EXCLUDED.
    """
    if requested is None:
        chosen = [d for d in known if d not in DEFAULT_EXCLUDED]
    else:
        chosen = [name.strip() for item in requested for name in item.split(",") if name.strip()]
        unknown = [d for d in chosen if d not in known]
        if unknown:
            raise ConfigError(
                f"dimension(s) {unknown} not in the principle file ({list(known)})",
                field="--dimensions",
            )
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"dimension listed twice in {chosen}", field="--dimensions")
    if not chosen:
        raise ConfigError("no dimension left to aggregate over", field="--dimensions")
    return tuple(d for d in known if d in chosen)
