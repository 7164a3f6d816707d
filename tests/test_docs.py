"""Generated docs are current: docs/config.md (every schema key), docs/rulegraph.dot and its
picture docs/rulegraph.svg (drawn from that DOT: a stale one is caught, with or without dot)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from helpers import REPO


def gen_docs() -> ModuleType:
    """scripts/gen_docs.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, child in node.get("properties", {}).items():
        keys.append(prefix + key)
        keys += schema_keys(child, f"{prefix}{key}.")
    return keys


def test_generated_docs_are_current() -> None:
    script = REPO / "scripts" / "gen_docs.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_config_md_has_every_key_with_its_default() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    for key in schema_keys(schema):
        assert f"| `{key}` |" in text, key
    assert "| `model.mp` | integer | `1` |" in text
    assert "| `sampling.defaults.temperature` | number | `0.7` |" in text  # through $ref


def test_rulegraph_has_every_rule() -> None:
    text = (REPO / "docs" / "rulegraph.dot").read_text()
    for rule in ("clean_prompts", "sample_shard", "gather_responses", "pair_responses"):
        assert f'label = "{rule}"' in text
    assert text.startswith("digraph snakemake_dag {")


def test_a_stale_rulegraph_svg_is_caught(tmp_path: Path) -> None:
    docs = gen_docs()
    dot = (REPO / "docs" / "rulegraph.dot").read_text()
    assert docs.svg_problem(dot, REPO / "docs" / "rulegraph.svg") is None
    assert docs.svg_problem(dot, tmp_path / "none.svg") == "missing"
    other = dot.replace('label = "clean_prompts"', 'label = "renamed_rule"')
    assert other != dot
    stale = tmp_path / "stale.svg"
    stale.write_text((REPO / "docs" / "rulegraph.svg").read_text())
    assert docs.svg_problem(other, stale) == "drawn from another rulegraph.dot"
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed: the SVG's bytes are not redrawn")
    drawn = docs.render_svg(other)
    assert drawn == docs.render_svg(other)  # graphviz draws the same bytes each time
    assert "renamed_rule" in drawn and docs.stamp(other) in drawn
    stale.write_text(drawn.replace("renamed_rule", "edited_rule"))  # edited by hand, same stamp
    assert docs.svg_problem(other, stale).startswith("not what graphviz ")


def test_readme_shows_the_rulegraph_picture() -> None:
    readme = (REPO / "README.md").read_text()
    assert re.search(r"!\[[^\]]*\]\(docs/rulegraph\.svg\)", readme)
    svg = (REPO / "docs" / "rulegraph.svg").read_text()
    for rule in ("clean_prompts", "sample_shard", "judge_shard", "aggregate", "report_figures"):
        assert f">{rule}</text>" in svg, rule
