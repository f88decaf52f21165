#!/usr/bin/env bash
# The cluster backend learns: configs/toy_openrlhf_cpu.yaml (OpenRLHF's own train_ppo_ray with
# the SRFT classes, 2 DeepSpeed ranks, asynchronous, CPU layer) over SEEDS, one run at a time
# (each starts its own local Ray), then the held-out accuracy before / after of every seed.
#   bash scripts/reproduce_toy_openrlhf.sh [OUTPUT_ROOT] [--set key=value ...]
#   (default runs/reproduce_toy_openrlhf; SEEDS default "42 1 2")
# Runs: OUTPUT_ROOT/seed-N. A finished run is skipped and an interrupted one resumed: re-run
# the script after an interruption. At the end: OUTPUT_ROOT/results.json, a table and
# OUTPUT_ROOT/curves.png (training reward, response length, entropy of every seed).
# Budget on 2 cores: about 3 minutes a seed.
set -euo pipefail
OUT="${1:-runs/reproduce_toy_openrlhf}"
shift || true
source "$(dirname "${BASH_SOURCE[0]}")/_cpu_env.sh"
unset RAY_ADDRESS  # each run starts and stops its own local Ray
PY="$VENV/bin/python"
CONFIG=configs/toy_openrlhf_cpu.yaml
SEEDS="${SEEDS:-42 1 2}"

for seed in $SEEDS; do
  dir="$OUT/seed-$seed"
  if [ -f "$dir/summary.json" ] && "$PY" -c "import json, sys; sys.exit('accuracy_after' not in json.load(open(sys.argv[1])))" "$dir/summary.json"; then
    echo "[reproduce] $dir is finished"
    continue
  fi
  if [ -f "$dir/config.yaml" ]; then
    args=(--resume "$dir")
  else
    args=(--config "$CONFIG" --output-dir "$dir" --set "train.seed=$seed" "$@")
  fi
  echo "[reproduce] seed $seed -> $dir (log: $dir.log)"
  mkdir -p "$OUT"
  "$PY" -m srft_openrlhf.cli train --backend openrlhf "${args[@]}" > "$dir.log" 2>&1 \
    || { echo "[reproduce] seed $seed failed: see $dir.log" >&2; exit 1; }
done

"$PY" -m srft_openrlhf.cli plot $(for seed in $SEEDS; do echo "$OUT/seed-$seed"; done) --smooth 5 --out "$OUT/curves.png"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$PY" - "$OUT" "$COMMIT" $SEEDS <<'EOF'
import json
import statistics
import sys
from pathlib import Path

import yaml

out, commit, seeds = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
runs = {}
for seed in seeds:
    summary = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
    runs[seed] = {k: summary[k] for k in ("accuracy_before", "accuracy_after", "wall_seconds")}
after = [r["accuracy_after"] * 100 for r in runs.values()]
before = [r["accuracy_before"] * 100 for r in runs.values()]
result = {
    "config": "configs/toy_openrlhf_cpu.yaml",
    "command": "bash scripts/reproduce_toy_openrlhf.sh",
    "commit": commit,
    "held_out_problems": yaml.safe_load((out / f"seed-{seeds[0]}" / "config.yaml").read_text())["data"]["max_eval_rows"],
    "held_out_before_percent": round(statistics.mean(before), 2),
    "held_out_after_percent_mean": round(statistics.mean(after), 2),
    "held_out_after_percent_std": round(statistics.stdev(after), 2) if len(after) > 1 else 0.0,
    "runs": runs,
}
(out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
print("| seed | held-out before | after | wall s |\n|---|---|---|---|")
for seed, r in runs.items():
    print(f"| {seed} | {r['accuracy_before']:.1%} | {r['accuracy_after']:.1%} | {r['wall_seconds']:.0f} |")
print(f"mean after: {result['held_out_after_percent_mean']:.1f} ± {result['held_out_after_percent_std']:.1f} %")
print(f"written: {out / 'results.json'}")
EOF
