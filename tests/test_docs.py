"""Generated docs are current: docs/config.md (every schema key) and docs/rulegraph.dot."""

from __future__ import annotations

import subprocess
import sys

import yaml
from helpers import REPO


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
