"""The smoke workflow in a directory whose path has spaces, a quote and a non-ASCII letter.

Every input is named that way too, and snakemake runs from a virtual environment reached
through such a path (the rules start with that interpreter), so each shell rule must quote
every path it passes on.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, write_config

from salmon_wf.data.jsonl import read_jsonl

pytestmark = pytest.mark.slow

ODD = "dir with spaces, o'quote and é"
RESOURCES = REPO / "src" / "salmon_wf" / "resources"


def odd_interpreter(tmp_path: Path) -> Path:
    """This test's interpreter, reached through a link in a folder with an odd name."""
    folder = tmp_path / "the venv's home é"
    folder.mkdir()
    (folder / "venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return folder / "venv" / "bin" / Path(sys.executable).name


def test_smoke_workflow_in_an_odd_path_with_odd_input_names(tmp_path: Path) -> None:
    workdir = tmp_path / ODD
    inputs = workdir / "in puts 'é'"
    inputs.mkdir(parents=True)
    names = {
        "prompts.input": ("demo_oasst/messages.jsonl", "OASST 'messages' é.jsonl"),
        "sampling.defaults.meta_prompt": ("meta_prompt.txt", "meta prompt 'é'.txt"),
        "judge.principles": ("principles.json", "princi'ples é.json"),
        "judge.template": ("judge_template.txt", "judge template 'é'.txt"),
    }
    changes: dict[str, object] = {}
    for key, (source, name) in names.items():
        changes[key] = str(shutil.copy(RESOURCES / source, inputs / name))
    changes["results_dir"] = "results 'é' dir"
    changes["models_dir"] = "models 'é' dir"
    write_config(workdir, **changes)
    python = odd_interpreter(tmp_path)
    command = [str(python), "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml")]
    command += ["--cores", "2", "--printshellcmds"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # the rules ran that interpreter, quoted (its path would split on the space unquoted)
    assert f"{shlex.quote(str(python))} -m salmon_wf.cli clean-prompts" in done.stdout + done.stderr
    results = workdir / "results 'é' dir"
    prompts = list(read_jsonl(results / "prompts.jsonl"))
    summary = json.loads((results / "prompts.summary.json").read_text(encoding="utf-8"))
    assert summary["input"] == changes["prompts.input"]
    assert len(prompts) == summary["n_prompts"] > 20
    preferences = json.loads((results / "preferences.json").read_text(encoding="utf-8"))
    assert preferences == list(read_jsonl(results / "preferences.jsonl"))
    assert preferences
    assert (workdir / "models 'é' dir" / "tiny" / "params.json").exists()
    assert (workdir / "logs" / "aggregate.log").exists()
