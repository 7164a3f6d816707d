"""Every command ends a user error with one line and exit 1, in one process and under torchrun.

The line is `salmon-wf <command>: error: <file>[ line N][: field]: <what>`; these tests run the
installed command as a user does (a subprocess) and compare stderr line for line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from salmon_wf import cli
from salmon_wf.errors import CheckpointError, ConfigError, RecordError, SalmonError

SALMON_WF = [sys.executable, "-m", "salmon_wf.cli"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TORCHRUN += ["-m", "salmon_wf.cli"]
MMAP_MESSAGE = (
    "cannot load with torch.load(weights_only=True, mmap=True) (mmap can only be used with "
    "files saved with `torch.save(_use_new_zipfile_serialization=True), please torch.save your "
    "checkpoint with this option in order to use mmap.)"
)


def failing(command: list[str], launcher: list[str] = SALMON_WF) -> list[str]:
    """stderr lines of a command that must fail with exit status 1."""
    done = subprocess.run([*launcher, *command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr or launcher is TORCHRUN, done.stderr[-3000:]
    return done.stderr.splitlines()


@pytest.fixture
def legacy_pth_model(tiny_dir: Path, tmp_path: Path) -> Path:
    """A model whose shard is a pre-zip torch.save file: torch.load(mmap=True) refuses it."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    shard = model / "consolidated.00.pth"
    torch.save({"x": torch.zeros(2)}, shard, _use_new_zipfile_serialization=False)
    return model


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_error_renders_file_line_field_and_what() -> None:
    assert (
        str(RecordError("missing", file="a.jsonl", line=3, field="id"))
        == "a.jsonl line 3: id: missing"
    )
    assert (
        str(CheckpointError("not found", file=Path("m/params.json"))) == "m/params.json: not found"
    )
    assert str(ConfigError("must be at least 1, got 0", field="--mp")) == (
        "--mp: must be at least 1, got 0"
    )
    whole = SalmonError("x.json: entry 2: field 'dimension' missing")
    assert (str(whole), whole.file, whole.line, whole.field) == (whole.what, None, None, None)
    error = RecordError("bad", file="f", line=9, field="k")
    assert (error.file, error.line, error.field, error.what) == ("f", 9, "k", "bad")
    assert isinstance(error, ValueError)  # callers that caught ValueError still do


def test_error_line_joins_a_multi_line_library_message() -> None:
    error = CheckpointError("cannot load (first\n  second)", file="m/consolidated.00.pth")
    assert cli.error_line("generate", error) == (
        "salmon-wf generate: error: m/consolidated.00.pth: cannot load (first second)"
    )
    missing = FileNotFoundError(2, "No such file or directory", "in.jsonl")
    assert (
        cli.error_line("pair", missing)
        == "salmon-wf pair: error: in.jsonl: No such file or directory"
    )


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(_args: object) -> int:
        raise RuntimeError("a bug")

    module = SimpleNamespace(run=run, add_arguments=lambda parser: None, __doc__="x")
    monkeypatch.setattr(cli, "_load", lambda name: module)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["pair"])
    with pytest.raises(KeyError):  # a KeyError is no user error either
        monkeypatch.setattr(module, "run", lambda _args: {}["k"])
        cli.main(["pair"])


def test_generate_names_the_checkpoint_file_torch_refuses(legacy_pth_model: Path) -> None:
    shard = legacy_pth_model / "consolidated.00.pth"
    lines = failing(["generate", "--model", str(legacy_pth_model), "--prompt", "hi"])
    assert lines == [f"salmon-wf generate: error: {shard}: {MMAP_MESSAGE}"]


def test_generate_under_torchrun_prints_the_line_once(legacy_pth_model: Path) -> None:
    shard = legacy_pth_model / "consolidated.00.pth"
    command = ["generate", "--model", str(legacy_pth_model), "--prompt", "hi"]
    lines = failing(command, TORCHRUN)
    ours = [line for line in lines if line.startswith("salmon-wf ")]
    assert ours == [f"salmon-wf generate: error: {shard}: {MMAP_MESSAGE}"]
    assert not [line for line in lines if "salmon_wf" in line and 'File "' in line]  # no trace


def test_tiny_model_bad_mp(tmp_path: Path) -> None:
    lines = failing(["tiny-model", str(tmp_path / "m"), "--mp", "3"])
    assert lines == [
        f"salmon-wf tiny-model: error: {tmp_path / 'm'}: weight 'tok_embeddings.weight': dim 0 "
        "of (512, 64) not divisible by MP 3"
    ]
    assert failing(["tiny-model", str(tmp_path / "m"), "--mp", "0"]) == [
        "salmon-wf tiny-model: error: --mp: must be at least 1, got 0"
    ]


def test_import_gguf_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUFxxxx")
    lines = failing(["import-gguf", str(bad), str(tmp_path / "out")])
    assert lines == [
        f"salmon-wf import-gguf: error: {bad}: not a readable GGUF file (Sorry, file appears to "
        "be version 2021161080 which we cannot handle)"
    ]


def test_import_hf_corrupt_safetensors(tiny_dir: Path, tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64}
    config |= {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    config |= {"intermediate_size": 160, "vocab_size": 512, "max_position_embeddings": 256}
    (hf / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 1e-5}))
    (hf / "model.safetensors").write_bytes(b"not safetensors")
    shutil.copy(tiny_dir / "tokenizer.model", hf)
    lines = failing(["import-hf", str(hf), str(tmp_path / "out")])
    assert lines == [
        f"salmon-wf import-hf: error: {hf / 'model.safetensors'}: not a readable safetensors "
        "file (Error while deserializing header: header too large)"
    ]


def test_clean_prompts_bad_jsonl_line(tmp_path: Path) -> None:
    messages = Path(__file__).parents[1] / "src/salmon_wf/resources/demo_oasst/messages.jsonl"
    first = messages.read_text(encoding="utf-8").splitlines()[0]
    bad = write_lines(tmp_path / "messages.jsonl", first, '{"message_id": ')
    lines = failing(["clean-prompts", "--input", str(bad), "--output", str(tmp_path / "p.jsonl")])
    assert lines == [
        f"salmon-wf clean-prompts: error: {bad} line 2: invalid JSON (Expecting value)"
    ]


def test_sample_record_without_instruction(tiny_dir: Path, tmp_path: Path) -> None:
    prompts = write_lines(
        tmp_path / "prompts.jsonl", '{"id": "a", "instruction": "x"}', '{"id": "b"}'
    )
    command = ["sample", "--model", str(tiny_dir), "--prompts", str(prompts)]
    lines = failing([*command, "--output", str(tmp_path / "out.jsonl")])
    assert lines == [f"salmon-wf sample: error: {prompts} line 2: field 'instruction' missing"]


def test_sample_shard_out_of_range(tiny_dir: Path, tmp_path: Path) -> None:
    prompts = write_lines(tmp_path / "prompts.jsonl", '{"id": "a", "instruction": "x"}')
    command = ["sample", "--model", str(tiny_dir), "--prompts", str(prompts), "--shard", "2"]
    lines = failing([*command, "--num-shards", "2", "--output", str(tmp_path / "out.jsonl")])
    assert lines == ["salmon-wf sample: error: --shard: shard 2 is not in 0..1"]


def test_gather_duplicate_record(tmp_path: Path) -> None:
    prompts = write_lines(tmp_path / "prompts.jsonl", '{"id": "a"}')
    shard = write_lines(tmp_path / "s.jsonl", '{"id": "a"}', '{"id": "a"}')
    command = ["gather", "--prompts", str(prompts), "--shards", str(shard)]
    lines = failing([*command, "--output", str(tmp_path / "out.jsonl")])
    assert lines == [f"salmon-wf gather: error: {shard}: duplicate record 'a' (also in {shard})"]


def test_pair_bad_record_and_missing_input(tmp_path: Path) -> None:
    run0 = write_lines(tmp_path / "r0.jsonl", '{"id": "a", "instruction": "x"}')
    missing = tmp_path / "r1.jsonl"
    command = ["pair", "--responses", str(run0), str(missing), "--output", str(tmp_path / "p")]
    assert failing(command) == [f"salmon-wf pair: error: {run0} line 1: field 'response' missing"]
    write_lines(run0, '{"id": "a", "instruction": "x", "response": "y"}')
    assert failing(command) == [f"salmon-wf pair: error: {missing}: No such file or directory"]


def judge_command(tiny_dir: Path, tmp_path: Path, principles: Path, template: Path) -> list[str]:
    pairs = write_lines(tmp_path / "pairs.jsonl")
    command = ["judge", "--model", str(tiny_dir), "--pairs", str(pairs)]
    command += ["--principles", str(principles), "--template", str(template)]
    return [*command, "--output", str(tmp_path / "j.jsonl")]


def test_judge_bad_principles_and_bad_template(tiny_dir: Path, tmp_path: Path) -> None:
    template = tmp_path / "template.txt"
    template.write_text("{UserInstruction} {OutputA} {OutputB} Output (")
    principles = tmp_path / "principles.json"
    principles.write_text(json.dumps([{"dimension": "Honest", "definition": "x"}]))
    assert failing(judge_command(tiny_dir, tmp_path, principles, template)) == [
        f"salmon-wf judge: error: {principles}: entry 0: field 'negative_definition' missing"
    ]
    entry = {"dimension": "Honest", "definition": "x", "negative_definition": "y"}
    principles.write_text(json.dumps([entry]))
    template.write_text("{UserInstruction} {OutputA} Output (")
    assert failing(judge_command(tiny_dir, tmp_path, principles, template)) == [
        f"salmon-wf judge: error: {template}: lacks placeholder(s) OutputB"
    ]


def aggregate_command(tmp_path: Path, *pair_lines: str) -> list[str]:
    """`salmon-wf aggregate` on a pairs file of `pair_lines` and no judgments."""
    pairs = write_lines(tmp_path / "pairs.jsonl", *pair_lines)
    summary = tmp_path / "pairs.summary.json"
    summary.write_text(json.dumps({"pairs": len(pair_lines), "dropped": {}}))
    judgments = write_lines(tmp_path / "judgments.jsonl")
    principles = Path(__file__).parents[1] / "src/salmon_wf/resources/principles.json"
    command = ["aggregate", "--pairs", str(pairs), "--pairs-summary", str(summary)]
    command += ["--judgments", str(judgments), "--principles", str(principles)]
    return [*command, "--output", str(tmp_path / "prefs.json")]


def test_aggregate_bad_pairs_line(tmp_path: Path) -> None:
    lines = failing(aggregate_command(tmp_path, '{"id": "a", "instruction": "x"'))
    pairs = tmp_path / "pairs.jsonl"
    assert len(lines) == 1 and lines[0].startswith(f"salmon-wf aggregate: error: {pairs} line 1: ")


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--passes", "0"], "--passes: must be >= 1, got 0"),
        (["--noise", "1.5"], "--noise: must be in [0, 1], got 1.5"),
        (["--dimensions", "Nonexistent"], "--dimensions: dimension(s) ['Nonexistent'] not in"),
    ],
)
def test_aggregate_bad_setting_is_one_line(tmp_path: Path, flags: list[str], line: str) -> None:
    lines = failing([*aggregate_command(tmp_path), *flags])
    assert len(lines) == 1 and lines[0].startswith(f"salmon-wf aggregate: error: {line}")
    assert not (tmp_path / "prefs.json").exists()


def test_the_launcher_ends_a_failed_group_without_torchruns_traceback(
    legacy_pth_model: Path,
) -> None:
    """The workflow's launcher (two ranks, torchrun): our line once, torchrun's in one line."""
    shard = legacy_pth_model / "consolidated.00.pth"
    launch = [sys.executable, "-m", "salmon_wf.launch", "--ranks-per-node", "2", "--"]
    command = ["generate", "--model", str(legacy_pth_model), "--prompt", "hi"]
    done = subprocess.run([*launch, *command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert [line for line in lines if line.startswith("salmon-wf ")] == [
        f"salmon-wf generate: error: {shard}: {MMAP_MESSAGE}"
    ]
    # rank 0 reports and exits 1; torchrun then stops rank 1, waiting out its grace period
    assert lines[-1] == "torchrun: salmon_wf.cli failed (rank 0 exit 1, rank 1 SIGTERM)"


def test_a_model_the_layers_refuse_names_its_params_file(tiny_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    params = json.loads((model / "params.json").read_text())
    (model / "params.json").write_text(json.dumps(params | {"sliding_window": 8}))
    lines = failing(["generate", "--model", str(model), "--prompt", "hi"])
    assert lines == [
        f"salmon-wf generate: error: {model / 'params.json'}: sliding_window 8 is smaller than "
        f"the context {params['max_seq_len']}: sliding-window attention is not implemented (run "
        "with max_seq_len <= 8, where it equals full attention)"
    ]
