#!/usr/bin/env bash
# Create or reuse .venv in the project root, install the pinned CPU stack and this package
# (editable), check lint, formatting and types (ruff, mypy; config in pyproject.toml), then
# run the test suite. Extra arguments go to pytest.
#   bash scripts/test.sh               # everything, slow end-to-end tests included
#   bash scripts/test.sh -m "not slow" # the fast part
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/install_cpu.sh
export PYTHONHASHSEED=0 TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1
echo "[test] ruff check, ruff format --check, mypy"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
