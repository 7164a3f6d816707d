#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the whole workflow on the embedded default
# (config.yaml: the project's OASST1-format sample + SmolLM2-135M-Instruct, on CPU).
# Extra arguments go to snakemake, e.g. `-n` for a dry run or `--configfile tests/smoke.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/snakemake --cores "${CORES:-$(nproc)}" "$@"
