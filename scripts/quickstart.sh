#!/usr/bin/env bash
# The README's first command: install the CPU stack into .venv (first time: several minutes)
# and train SRFT on the toy task (srft_openrlhf/data/toy.py), CPU only, offline.
#   bash scripts/quickstart.sh [OUTPUT_DIR] [--set key=value ...]   (default: runs/quickstart)
# Builds and caches the toy base model on first use (${SRFT_CACHE:-~/.cache/srft-openrlhf}),
# prints held-out accuracy before and after training and writes OUTPUT_DIR/summary.json
# (accuracy_before, accuracy_after, wall_seconds). Running it again on the same folder
# continues (or just reports) that run; delete the folder for a fresh one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-runs/quickstart}"
shift || true
started=$(date +%s)
source scripts/install_cpu.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ -f "$OUT/config.yaml" ]; then
  echo "[quickstart] $OUT already holds a run: continuing it (delete the folder for a fresh run)"
  args=(--resume "$OUT")
else
  args=(--config configs/toy_cpu.yaml --output-dir "$OUT" "$@")
fi
"$VENV/bin/python" -m srft_openrlhf.cli train "${args[@]}"
echo "[quickstart] finished in $(( $(date +%s) - started )) s (installation included); results in $OUT/summary.json"
