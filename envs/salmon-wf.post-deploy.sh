#!/usr/bin/env bash
# Snakemake runs this once in a new environment of envs/salmon-wf.yaml (--sdm conda): it installs
# salmon-wf from this checkout, editable and without dependencies (the yaml lists them), so the
# rules' `python -m salmon_wf.cli` runs this checkout's code.
set -euo pipefail
python -m pip install --disable-pip-version-check -q --no-deps -e "$(dirname "$0")/.."
