#!/usr/bin/env bash
# The cluster backend learns: configs/toy_openrlhf_cpu.yaml (OpenRLHF's own train_ppo_ray with
# the SRFT classes, 2 DeepSpeed ranks, asynchronous, CPU layer) over SEEDS, one run at a time
# (each starts its own local Ray), then the held-out accuracy before / after of every seed.
#   bash scripts/reproduce_toy_openrlhf.sh [OUTPUT_ROOT] [--set key=value ...]
#   (default runs/reproduce_toy_openrlhf; SEEDS default "42 1 2")
# Runs: OUTPUT_ROOT/seed-N. A finished run is skipped and an interrupted one resumed: re-run
# the script after an interruption. At the end: OUTPUT_ROOT/results.json, a table and
# OUTPUT_ROOT/curves.png (training reward, response length, entropy of every seed).
# results.json also holds each run's mean step time split as OpenRLHF times it (generation,
# experience forwards, training, weight sync, and waiting: the step's wall time not spent in the
# trainer's own phases; in async mode generation overlaps training), the rollout generator and
# the CPU it ran on. With the vLLM engines: --set rollout.generator=vllm (its own OUTPUT_ROOT).
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
REPRO_ARGS="$*" "$PY" - "$OUT" "$COMMIT" $SEEDS <<'EOF'
import json
import os
import statistics
import sys
from pathlib import Path

import yaml

out, commit, seeds = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]


def step_seconds(run: Path) -> dict[str, float]:
    """Mean seconds per training step (the first, with start-up costs, left out) by phase."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "timing/step_total" in r][1:]
    mean = {k: statistics.mean(r.get(f"timing/{k}", 0.0) for r in steps) for k in
            ("generation", "make_experience", "ppo_train", "broadcast", "step_total")}
    own = mean["make_experience"] + mean["ppo_train"] + mean["broadcast"]
    asynchronous = yaml.safe_load((run / "config.yaml").read_text())["train"]["async_enable"]
    wait = mean["step_total"] - own - (0.0 if asynchronous else mean["generation"])
    names = {"generation": "generation", "make_experience": "experience", "ppo_train": "training",
             "broadcast": "weight_sync", "step_total": "total"}
    return {**{names[k]: round(v, 3) for k, v in mean.items()}, "wait": round(max(wait, 0.0), 3)}


def cpu() -> dict[str, str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    field = lambda name: next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(name)), "")
    simd = sorted(f for f in field("flags").split() if f.startswith(("avx", "sse4", "amx", "fma")))
    return {"model": field("model name"), "simd": " ".join(simd)}


runs = {}
for seed in seeds:
    summary = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
    runs[seed] = {k: summary[k] for k in ("accuracy_before", "accuracy_after", "wall_seconds")}
    runs[seed]["step_seconds"] = step_seconds(out / f"seed-{seed}")
config = yaml.safe_load((out / f"seed-{seeds[0]}" / "config.yaml").read_text())
after = [r["accuracy_after"] * 100 for r in runs.values()]
before = [r["accuracy_before"] * 100 for r in runs.values()]
result = {
    "config": "configs/toy_openrlhf_cpu.yaml",
    "command": " ".join(["bash scripts/reproduce_toy_openrlhf.sh", str(out), os.environ.get("REPRO_ARGS", "")]).strip(),
    "commit": commit,
    "generator": config["rollout"]["generator"],
    "cpu": cpu(),
    "held_out_problems": config["data"]["max_eval_rows"],
    "held_out_before_percent": round(statistics.mean(before), 2),
    "held_out_after_percent_mean": round(statistics.mean(after), 2),
    "held_out_after_percent_std": round(statistics.stdev(after), 2) if len(after) > 1 else 0.0,
    "runs": runs,
}
(out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
print("| seed | held-out before | after | wall s | s/step: generation | experience | training | weight sync | wait |")
print("|---|---|---|---|---|---|---|---|---|")
for seed, r in runs.items():
    t = r["step_seconds"]
    print(f"| {seed} | {r['accuracy_before']:.1%} | {r['accuracy_after']:.1%} | {r['wall_seconds']:.0f} | "
          f"{t['generation']:.2f} | {t['experience']:.2f} | {t['training']:.2f} | {t['weight_sync']:.2f} | {t['wait']:.2f} |")
print(f"mean after: {result['held_out_after_percent_mean']:.1f} ± {result['held_out_after_percent_std']:.1f} %")
print(f"written: {out / 'results.json'}")
EOF
