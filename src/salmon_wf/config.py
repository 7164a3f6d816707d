"""The configuration schema: its defaults, the config check, and config sections as flags.

One file, schemas/config.schema.yaml (in the package as salmon_wf/config.schema.yaml), holds
every key and its default. The workflow validates against it, every command takes its flag
defaults from it, and one function turns a section into a command's flags, so a default cannot
differ between the config and a command run by hand, and a key cannot reach one command in a
different way than another.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import shlex
from pathlib import Path
from typing import Any

import yaml

from salmon_wf.errors import ConfigError

SCHEMA_FILE = Path(__file__).with_name("config.schema.yaml")

# The config keys each command takes as flags: command -> (schema section, keys in flag order).
# A section's other keys are files the rule passes as inputs (Snakemake tracks them), the
# workflow's own layout (shards, from the job's wildcards) or the model's preparation; see
# WORKFLOW_KEYS. The order is the flags' order on the command line: changing it changes every
# job's command and so reruns it once.
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "clean-prompts": (
        "prompts",
        (
            *("format", "drop_deleted", "drop_review_failed", "languages", "dedupe"),
            *("min_chars", "max_chars", "split"),
        ),
    ),
    "sample": (
        "definitions.sampling_run",
        (
            *("seed", "temperature", "top_p", "max_new_tokens", "stop", "style", "meta_prompt"),
            *("batch_size", "long_prompt_policy", "cut_at", "window", "max_shared_seq_len"),
        ),
    ),
    "pair": ("judge", ("min_chars", "min_chars_of")),
    "judge": (
        "judge",
        ("answer_context", "choices", "max_rows", "long_prompt_policy", "max_length", "add_bos"),
    ),
    "aggregate": (
        "aggregate",
        (
            *("seed", "dimensions", "passes", "geometric_p", "max_principles", "negation_prob"),
            *("ai_rule_prob", "ai_phrase", "noise", "rule_noise", "language_rule"),
        ),
    ),
    # The languages of the pairs' texts (salmon-wf languages, pairs.languages.jsonl): only what
    # the codes depend on, so an aggregation setting does not rerun it. The aggregate rule
    # passes the same flags (its stats record them).
    "languages": ("aggregate", ("langid_model", "langid_max_chars")),
    # The calibration's pair choice (salmon-wf calibrate pairs).
    "calibrate-pairs": (
        "calibrate",
        ("seed", "first_turn_only", "pairs_per_prompt", "max_pairs"),
    ),
    # The calibration's aggregated decision reads the aggregation's own settings (it owns none).
    "calibrate-summary": ("aggregate", ("seed", "dimensions", "geometric_p", "max_principles")),
    # Every model-running command (sample, judge; generate takes dtype and device).
    "model": ("model", ("dtype", "device", "max_seq_len", "threads")),
    # Not run by the workflow: one prompt by hand, with the sampling runs' defaults.
    "generate": (
        "definitions.sampling_run",
        ("temperature", "top_p", "max_new_tokens", "stop", "style", "seed"),
    ),
}

# Keys no command takes as a flag, and what uses them instead.
WORKFLOW_KEYS: dict[str, str] = {
    "prompts.input": "clean_prompts' input file (--input)",
    "definitions.sampling_run.shards": "the run's shard jobs (--shard/--num-shards, wildcards)",
    "judge.principles": "judge_shard's and aggregate's input file (--principles)",
    "judge.template": "judge_shard's input file (--template)",
    "judge.shards": "the judge's shard jobs (--shard/--num-shards, wildcards)",
    "judge.mp": "the judge's and the calibration's launcher ranks (null: model.mp)",
    "calibrate.input": "calibrate_pairs' input file (--input; null: prompts.input)",
    "calibrate.shards": "the calibration judge's shard jobs (--shard/--num-shards, wildcards)",
    "model.name": "the converted model's folder under models_dir (--model)",
    "model.source": "prepare_model's conversion",
    "model.path": "prepare_model's source, or the model folder for source dir (--model)",
    "model.adapters": "prepare_model's conversion (import-hf --adapter)",
    "model.mp": "prepare_model (--mp) and the sampling launcher's ranks (judge's: judge.mp)",
    "model.tiny_seed": "prepare_model (tiny-model --seed)",
}


@functools.cache
def schema() -> dict[str, Any]:
    """The parsed schema (read once per process)."""
    with SCHEMA_FILE.open(encoding="utf-8") as handle:  # libyaml's loader where built: ~5x
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def section(name: str) -> dict[str, Any]:
    """The properties of a section: "judge", "slurm.gpu_jobs", "definitions.sampling_run"."""
    node = schema()
    parts = name.split(".")
    if parts[0] == "definitions":
        node, parts = node["definitions"][parts[1]], parts[2:]
    for part in parts:
        node = node["properties"][part]
        if "$ref" in node:
            node = node | _resolve(node["$ref"])
    return node["properties"]


def _resolve(ref: str) -> dict[str, Any]:
    node = schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def defaults(name: str) -> dict[str, Any]:
    """The schema's defaults of a section's keys (copies: a caller may change them)."""
    return {k: copy.deepcopy(v["default"]) for k, v in section(name).items() if "default" in v}


def command_defaults(command: str) -> dict[str, Any]:
    """The defaults of the keys `command` takes as flags (a required key has none)."""
    name, keys = COMMANDS[command]
    known = defaults(name)
    return {k: known[k] for k in keys if k in known}


def _flag(key: str, value: Any, default: Any) -> list[str]:
    """One key's flags: None none; bools --key / --no-key; lists repeat --key; [] --no-key.

    An empty list needs a flag only where the default is not empty already (stop: [] is
    --no-stop; languages: [] is the default, all languages).
    """
    flag = "--" + key.replace("_", "-")
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    if isinstance(value, list | tuple):
        if not value:
            return [] if default == [] else ["--no-" + flag[2:]]
        return [item for v in value for item in (flag, shlex.quote(str(v)))]
    return [flag, shlex.quote(str(value))]


def command_flags(command: str, values: dict[str, Any]) -> str:
    """Shell-quoted flags of `command` from a config section (keys it does not take ignored)."""
    name, keys = COMMANDS[command]
    known = defaults(name)
    parts = [p for k in keys if k in values for p in _flag(k, values[k], known.get(k))]
    return " ".join(parts)


def _with_defaults(validator_class: Any) -> Any:
    """A validator that fills in the schema's defaults as it goes (Snakemake's way)."""
    from jsonschema import validators

    check_properties = validator_class.VALIDATORS["properties"]

    def fill(validator: Any, properties: dict, instance: Any, schema_: dict) -> Any:
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema_)

    return validators.extend(validator_class, {"properties": fill})


def _where(path: Any) -> str:
    return ".".join(str(p) for p in path) or "config"


def _one_line(error: Any) -> ConfigError:
    """A jsonschema error as one line naming the key: `config judge.shard: unknown key ...`."""
    where = _where(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        name = unknown[0] if len(unknown) == 1 else ", ".join(unknown)
        key = name if where == "config" else f"{where}.{name}"
        close = difflib.get_close_matches(unknown[0], known, n=1) if len(unknown) == 1 else []
        hint = f"did you mean {close[0]}? " if close else ""
        what = f"unknown key ({hint}known: {', '.join(known)})"
        return ConfigError(what, field=f"config {key}")
    return ConfigError(error.message, field=f"config {where}")


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check `config` against the schema, filling in defaults; a problem is one ConfigError.

    Each sampling run is checked once more after merging it over sampling.defaults (its seed
    may come from either).
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    full = schema()
    checker = _with_defaults(Draft202012Validator)(full)
    error = best_match(list(checker.iter_errors(config)))
    if error is not None:
        raise _one_line(error)
    run_schema = full["definitions"]["sampling_run"] | {"definitions": full["definitions"]}
    for run in config["sampling"]["runs"]:
        merged = run_settings(config, run)
        error = best_match(Draft202012Validator(run_schema).iter_errors(merged))
        if error is not None:
            error.path.extendleft([run, "runs", "sampling"])  # leftmost last
            raise _one_line(error)
    return config


def run_settings(config: dict[str, Any], run: str) -> dict[str, Any]:
    """A sampling run's settings: the schema's defaults, then sampling.defaults, then the run."""
    sampling = config["sampling"]
    return (
        defaults("definitions.sampling_run") | sampling.get("defaults", {}) | sampling["runs"][run]
    )


class _Append(argparse.Action):
    """A repeatable flag whose first use replaces the default list (argparse's append adds)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        kept = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*kept, values])


def add_list_option(
    parser: argparse.ArgumentParser, key: str, default: list[str] | None, help: str
) -> None:
    """`--key V` (repeatable) and `--no-key` (an empty list): a list key's two flag forms."""
    flag = key.replace("_", "-")
    parser.add_argument(f"--{flag}", dest=key, action=_Append, default=default, help=help)
    parser.add_argument(
        f"--no-{flag}",
        dest=key,
        action="store_const",
        const=[],
        default=argparse.SUPPRESS,
        help=f"an empty {key} list",
    )
