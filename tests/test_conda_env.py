"""`--sdm conda`: the rules' environment holds salmon-wf's dependencies and this checkout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO

ENV = REPO / "envs" / "salmon-wf.yaml"
POST_DEPLOY = REPO / "envs" / "salmon-wf.post-deploy.sh"


def test_the_environment_lists_the_package_dependencies_but_snakemake() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [d for d in project["dependencies"] if not d.startswith("snakemake")]
    conda = yaml.safe_load(ENV.read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert pip == wanted
    assert "pip" in conda and any(str(d).startswith("python=") for d in conda)


def test_every_rule_with_a_command_names_the_environment() -> None:
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text()
        rules = re.findall(r"^\s*rule (\w+):", text, flags=re.MULTILINE)
        envs = re.findall(r"conda:\n\s+\"\.\./envs/salmon-wf\.yaml\"", text)
        shells = re.findall(r"^\s+shell:", text, flags=re.MULTILINE)
        assert len(envs) == len(shells), (path, rules)


def test_the_post_deploy_script_installs_this_checkout(tmp_path: Path) -> None:
    """What snakemake runs in a new environment, here in a fresh venv (as `python` on PATH)."""
    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    if subprocess.run([python, "-c", "import setuptools"], capture_output=True).returncode:
        pytest.skip("no setuptools to build the editable install offline")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run(["bash", str(POST_DEPLOY)], check=True, env=env, timeout=300)
    where = subprocess.run(
        [python, "-c", "import salmon_wf; print(salmon_wf.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert where == str(REPO / "src" / "salmon_wf" / "__init__.py")
