"""One path for configuration: a closed schema, its defaults in every command, one flag mapping."""

from __future__ import annotations

import argparse
import copy
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from salmon_wf import config as C
from salmon_wf.cli import build_parser
from salmon_wf.data.langid import DEFAULT_MAX_CHARS
from salmon_wf.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Each command's required flags (files), so that its parser can run with nothing else.
REQUIRED = {
    "clean-prompts": ["--input", "in.jsonl", "--output", "out.jsonl"],
    "sample": ["--model", "m", "--prompts", "p.jsonl", "--output", "o.jsonl"],
    "pair": ["--responses", "a.jsonl", "b.jsonl", "--output", "o.jsonl"],
    "judge": [
        "--model",
        "m",
        "--pairs",
        "p",
        "--principles",
        "x",
        "--template",
        "t",
        "--output",
        "o",
    ],
    "aggregate": ["--pairs", "p", "--judgments", "j", "--principles", "x", "--output", "o"],
    "languages": ["--pairs", "p", "--output", "o"],
    "generate": ["--model", "m", "--prompt", "hi"],
    "gather": ["--prompts", "p", "--shards", "s", "--output", "o"],
}
# The model flags are every model-running command's: checked on sample's and judge's parsers.
# The language-id flags are the languages command's, passed to aggregate too (its stats).
PARSERS = {"model": ("sample", "judge"), "languages": ("languages", "aggregate")}

# The only flag defaults that are not the schema's, and why.
NOT_IN_SCHEMA = {
    ("sample", "seed"): 42,  # required per run in the config (two runs must differ)
    ("generate", "seed"): 42,
    ("sample", "meta_prompt"): None,  # a file: the config's default is the repo's copy
}

# Values unlike the defaults, of every kind the mapping writes: False, [], lists, None, text.
OTHER_VALUES: dict[str, dict[str, Any]] = {
    "clean-prompts": {
        "format": "messages",
        "drop_deleted": False,
        "drop_review_failed": False,
        "languages": ["en", "de"],
        "dedupe": False,
        "min_chars": 0,
        "max_chars": 10,
        "split": "all",
    },
    "sample": {
        "seed": 7,
        "temperature": 0.0,
        "top_p": 0.5,
        "max_new_tokens": 5,
        "stop": [],
        "style": "chatml",
        "meta_prompt": "meta prompt.txt",
        "batch_size": 3,
        "long_prompt_policy": "truncate",
        "cut_at": ["###", "\n\nUser"],
        "window": 768,
        "max_shared_seq_len": 640,
    },
    "pair": {"min_chars": 2, "min_chars_of": "raw"},
    "judge": {
        "answer_context": "Answer (",
        "choices": ["x", "y"],
        "max_rows": 4,
        "long_prompt_policy": "left",
        "max_length": 1536,
        "add_bos": False,
    },
    "aggregate": {
        "seed": 1,
        "dimensions": ["Honest", "Ethical"],
        "passes": 2,
        "geometric_p": 0.5,
        "max_principles": 3,
        "negation_prob": 0.25,
        "ai_rule_prob": 1.0,
        "ai_phrase": "As a model",
        "noise": 0.0,
        "rule_noise": 0.5,
        "language_rule": False,
    },
    "languages": {"langid_model": "lid.176.bin", "langid_max_chars": 30},
    "model": {"dtype": "bf16", "device": "cpu", "max_seq_len": 64, "threads": 3},
    "generate": {
        "temperature": 0.0,
        "top_p": 0.9,
        "max_new_tokens": 12,
        "stop": [],
        "style": "plain",
        "seed": 5,
    },
}


def parse(command: str, *flags: str) -> argparse.Namespace:
    parser = build_parser(only=command)
    return parser.parse_args([command, *REQUIRED[command], *flags])


def plain(value: Any) -> Any:
    """Namespace values as the config writes them (tuples and paths as lists and text)."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def base_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def error_of(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        C.validate(config)
    return str(caught.value)


# ---------------------------------------------------------------- closed sections


def object_nodes(node: Any, where: str = "") -> list[tuple[str, dict]]:
    """Every schema node that describes an object with named keys."""
    found = []
    if isinstance(node, dict):
        if "properties" in node and not where.endswith(".properties"):
            found.append((where, node))
        for key, value in node.items():
            found += object_nodes(value, f"{where}.{key}")
    return found


def test_every_section_of_the_schema_is_closed() -> None:
    nodes = object_nodes(C.schema())
    # top, 7 sections, slurm_jobs, slurm_job_overrides, sampling_run, sampling_settings
    assert len(nodes) == 12
    open_ = [where for where, node in nodes if node.get("additionalProperties") is not False]
    assert open_ == []
    runs = C.schema()["properties"]["sampling"]["properties"]["runs"]
    assert runs["additionalProperties"] == {"$ref": "#/definitions/sampling_settings"}


def test_the_package_schema_is_the_repository_schema() -> None:
    assert C.SCHEMA_FILE.resolve() == (REPO / "schemas" / "config.schema.yaml").resolve()


@pytest.mark.parametrize(
    ("dotted", "expected"),
    [
        ("judge.shard", "config judge.shard: unknown key (did you mean shards? known: add_bos,"),
        ("aggregate.passs", "config aggregate.passs: unknown key (did you mean passes? known:"),
        ("result_dir", "config result_dir: unknown key (did you mean results_dir? known: agg"),
        ("sampling.defaults.max_new_token", "config sampling.defaults.max_new_token: unknown"),
        ("sampling.runs.response1.temprature", "config sampling.runs.response1.temprature: "),
        ("slurm.gpu_jobs.memm", "config slurm.gpu_jobs.memm: unknown key (did you mean mem_mb?"),
        ("slurm.nodes", "config slurm.nodes: unknown key (known: cheap_rules_local, cpu_jobs,"),
        ("model.dtyp", "config model.dtyp: unknown key (did you mean dtype? known: adapters,"),
        ("prompts.language", "config prompts.language: unknown key (did you mean languages?"),
    ],
)
def test_a_typo_at_any_depth_is_one_line_naming_the_key(dotted: str, expected: str) -> None:
    config = base_config()
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = 4
    message = error_of(config)
    assert message.startswith(expected)
    assert "\n" not in message


def test_a_wrong_type_and_a_run_without_seed_name_their_key() -> None:
    config = base_config()
    config["judge"]["shards"] = "two"
    assert error_of(config) == "config judge.shards: 'two' is not of type 'integer'"
    config = base_config()
    del config["sampling"]["runs"]["response1"]["seed"]
    message = error_of(config)
    assert message == "config sampling.runs.response1: 'seed' is a required property"


def test_validation_fills_the_defaults_and_keeps_the_sections_as_given() -> None:
    config = base_config()
    C.validate(config)
    assert config["judge"]["min_chars_of"] == "clean"
    assert config["slurm"]["gpu_jobs"]["gpus_per_node"] is None  # through the $ref
    # sampling.defaults and runs are overrides: nothing is filled into them
    given = base_config()["sampling"]
    assert config["sampling"]["defaults"] == given["defaults"]
    assert config["sampling"]["runs"] == given["runs"]
    assert C.run_settings(config, "response1")["seed"] == 43
    assert C.run_settings(config, "response1")["window"] is None


@pytest.mark.slow
def test_snakemake_stops_at_start_naming_a_typo_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text("sampling:\n  runs:\n    response0: {seed: 42, temprature: 0.5}\n")
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"), str(bad)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).splitlines()
    line = "config sampling.runs.response0.temprature: unknown key (did you mean temperature? "
    assert any(x.startswith(line) for x in lines), done.stderr[-2000:]
    assert "Failed validating" not in done.stderr  # not jsonschema's 50-line dump


# ---------------------------------------------------------------- defaults in one place


def test_every_key_is_a_flag_of_one_command_or_the_workflows() -> None:
    for command, (name, keys) in C.COMMANDS.items():
        assert set(keys) <= set(C.section(name)), command
    sections = {"prompts", "judge", "aggregate", "model", "definitions.sampling_run", "calibrate"}
    for name in sections:
        for key in C.section(name):
            dotted = f"{name}.{key}"
            takers = [c for c, (n, keys) in C.COMMANDS.items() if n == name and key in keys]
            # generate: one prompt by hand, no rule; calibrate-summary reads the aggregation's
            # settings for its aggregated decision, which aggregate owns.
            takers = [c for c in takers if c not in ("generate", "calibrate-summary")]
            assert len(takers) + (dotted in C.WORKFLOW_KEYS) == 1, (dotted, takers)
            spec = C.section(name)[key]
            if takers and "null" in spec.get("type", []):  # None writes no flag: the default
                assert spec["default"] is None, dotted


@pytest.mark.parametrize(
    "command", ["clean-prompts", "sample", "pair", "judge", "aggregate", "languages"]
)
def test_flag_defaults_are_the_schemas_key_by_key(command: str) -> None:
    args = vars(parse(command))
    name, keys = C.COMMANDS[command]
    schema = C.defaults(name)
    for key in keys:
        expected = NOT_IN_SCHEMA.get((command, key), schema.get(key))
        assert (command, key) in NOT_IN_SCHEMA or key in schema, (command, key)
        assert plain(args[key]) == expected, (command, key)


@pytest.mark.parametrize("command", ["generate", "model"])
def test_generate_and_model_flag_defaults_are_the_schemas(command: str) -> None:
    for parser in PARSERS.get(command, (command,)):
        args = vars(parse(parser))
        for key, default in C.command_defaults(command).items():
            assert plain(args[key]) == default, (parser, key)
    assert vars(parse("generate"))["seed"] == NOT_IN_SCHEMA[("generate", "seed")]
    assert vars(parse("generate"))["dtype"] == C.defaults("model")["dtype"]


def test_the_issues_three_max_new_tokens_are_one() -> None:
    from salmon_wf.engine.sampler import SamplingParams

    expected = C.defaults("definitions.sampling_run")["max_new_tokens"]
    assert expected == 768
    assert parse("sample").max_new_tokens == expected
    assert parse("generate").max_new_tokens == expected
    assert SamplingParams().max_new_tokens == expected


def test_settings_dataclasses_default_to_the_schema() -> None:
    from salmon_wf.engine.sampler import SamplingParams
    from salmon_wf.stages.aggregate import Settings
    from salmon_wf.stages.clean import PromptFilter

    run = C.defaults("definitions.sampling_run")
    params = SamplingParams()
    assert (params.temperature, params.top_p) == (run["temperature"], run["top_p"])
    prompts = C.defaults("prompts")
    for f in fields(PromptFilter):
        if f.name != "require_reply":  # SALMON's rule, no config key
            assert plain(f.default) == prompts[f.name], f.name
    aggregate = C.defaults("aggregate")
    for f in fields(Settings):
        assert plain(f.default) == aggregate[f.name], f.name
    assert set(aggregate) == {f.name for f in fields(Settings)}
    assert Settings().langid_max_chars == DEFAULT_MAX_CHARS  # data/langid.py's own default


def test_gather_takes_no_setting() -> None:
    parser = build_parser(only="gather")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["gather"]._actions} - {"help"}
    assert dests == {"prompts", "shards", "output", "principles", "scores", "summaries", "summary"}
    assert all(v is None for k, v in vars(parse("gather")).items() if k not in REQUIRED_DESTS)


REQUIRED_DESTS = {"command", "prompts", "shards", "output"}


# ---------------------------------------------------------------- one mapping


@pytest.mark.parametrize("command", list(OTHER_VALUES))
def test_a_section_maps_to_flags_the_command_reads_back(command: str) -> None:
    values = OTHER_VALUES[command]
    assert set(values) == set(C.COMMANDS[command][1])
    flags = shlex.split(C.command_flags(command, values | {"not_a_flag": 1}))
    for parser in PARSERS.get(command, (command,)):
        args = vars(parse(parser, *flags))
        for key, value in values.items():
            assert plain(args[key]) == value, (parser, key)


def test_the_mapping_writes_each_kind_of_value_one_way() -> None:
    flags = C.command_flags
    assert flags("judge", {"add_bos": True, "max_length": None}) == "--add-bos"
    assert flags("judge", {"add_bos": False, "choices": ["a", "b"]}) == (
        "--choices a --choices b --no-add-bos"
    )
    assert flags("sample", {"stop": [], "seed": 1}) == "--seed 1 --no-stop"
    assert flags("sample", {"cut_at": []}) == "--no-cut-at"  # [] is not the default (null)
    assert flags("clean-prompts", {"languages": []}) == ""  # [] is the default: all
    assert flags("sample", {"meta_prompt": "my prompt.txt"}) == "--meta-prompt 'my prompt.txt'"


def test_stop_and_cut_at_lists_replace_their_defaults() -> None:
    assert parse("sample").stop == ["###"]
    assert parse("sample", "--stop", "<end>").stop == ["<end>"]
    assert parse("sample", "--stop", "a", "--stop", "b").stop == ["a", "b"]
    assert parse("sample", "--no-stop").stop == []
    assert parse("sample", "--no-cut-at").cut_at == []
    assert parse("sample").cut_at is None
    assert parse("judge", "--no-bos").add_bos is False  # the old spelling still works
    assert parse("judge").long_prompt_policy == C.defaults("judge")["long_prompt_policy"]
    assert C.command_flags("aggregate", {"dimensions": []}) == "--no-dimensions"
    assert parse("aggregate", "--no-dimensions").dimensions == []  # then: no dimension left
    assert parse("aggregate", "--dimensions", "Honest,Ethical").dimensions == ["Honest,Ethical"]


def test_rules_take_no_hand_picked_keys() -> None:
    rules = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    assert "keep = (" not in rules and "flags(" not in rules.replace("command_flags(", "")
    for command in ("clean-prompts", "pair", "judge", "aggregate", "sample", "model"):
        assert f'command_flags("{command}"' in rules or f"command_flags('{command}'" in rules


def test_defaults_are_copies() -> None:
    first = C.defaults("definitions.sampling_run")
    first["stop"].append("x")
    assert C.defaults("definitions.sampling_run")["stop"] == ["###"]
    assert copy.deepcopy(C.schema()) == C.schema()


def test_the_default_configs_commands_are_those_jobs_already_ran() -> None:
    """Snakemake reruns a job whose command changed: these strings stay as they were written
    before the one mapping (the judge's --add-bos and the pair's one string are new)."""
    config = base_config()
    C.validate(config)
    assert C.command_flags("clean-prompts", config["prompts"]) == (
        "--format auto --drop-deleted --drop-review-failed --dedupe --min-chars 4"
        " --max-chars 4096 --split train"
    )
    assert C.command_flags("sample", C.run_settings(config, "response0")) == (
        "--seed 42 --temperature 0.7 --top-p 1.0 --max-new-tokens 96 --stop '###' --style chatml"
        " --meta-prompt src/salmon_wf/resources/system_prompt.txt --batch-size 8"
        " --long-prompt-policy skip --max-shared-seq-len 0"
    )
    assert C.command_flags("model", config["model"]) == (  # auto since issue 16 (was fp32)
        "--dtype auto --device auto --max-seq-len 2048 --threads 1"
    )
    assert C.command_flags("aggregate", config["aggregate"]) == (
        "--seed 42 --passes 4 --geometric-p 0.2 --max-principles 8 --negation-prob 0.5"
        " --ai-rule-prob 0.5 --ai-phrase 'As an AI language model' --noise 0.1"
        " --rule-noise 0.25 --language-rule"
    )
