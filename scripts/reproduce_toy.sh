#!/usr/bin/env bash
# The paper's comparison (Table 2 layout) and ablations (Table 3 layout) on the toy task:
# SRFT, GRPO, SFT, SFT→RL, LUFFY, SRFT w/o w_SFT and SRFT w/o w_RL, each with the same
# budget (configs/toy_cpu.yaml: same steps, prompts per step, learning rate), over several
# seeds (the seed changes prompt order and sampling; the toy base model is shared).
#   bash scripts/reproduce_toy.sh [OUTPUT_ROOT] [--set key=value ...]   (default runs/reproduce_toy)
# Environment: SEEDS (default "1 2 3"), METHODS (default: the seven above), STEPS (default:
# the config's train.steps), SWITCH (SFT→RL switch step, default STEPS/2).
# Each run is OUTPUT_ROOT/METHOD/seed-N; finished runs are skipped and interrupted ones
# resumed, so the script can be re-run after an interruption. At the end it writes
# OUTPUT_ROOT/results.md (held-out accuracy, mean ± std over seeds) and OUTPUT_ROOT/curves.png.
# Budget: about 21 quick starts (one per method and seed), i.e. an hour or two on a laptop.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-runs/reproduce_toy}"
shift || true
source scripts/install_cpu.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PY="$VENV/bin/python"
CONFIG=configs/toy_cpu.yaml
SEEDS="${SEEDS:-1 2 3}"
METHODS="${METHODS:-srft grpo sft sft_then_rl luffy srft_no_wsft srft_no_wrl}"
read -r CONFIG_STEPS CONFIG_WARMUP < <("$PY" -c "import yaml, sys; t = yaml.safe_load(open(sys.argv[1]))['train']; \
print(t['steps'], t.get('lr_warmup_steps', 0))" "$CONFIG")
STEPS="${STEPS:-$CONFIG_STEPS}"
SWITCH="${SWITCH:-$(( STEPS / 2 ))}"
WARMUP=$(( CONFIG_WARMUP < STEPS ? CONFIG_WARMUP : STEPS ))  # a shortened run keeps a valid warm-up

for method in $METHODS; do
  case "$method" in
    sft_then_rl|rl_then_sft) algo=(--set "train.schedule=$method" --set "train.switch_step=$SWITCH") ;;
    *) algo=(--algo "$method") ;;
  esac
  for seed in $SEEDS; do
    dir="$OUT/$method/seed-$seed"
    if [ -f "$dir/summary.json" ]; then
      echo "[reproduce_toy] $dir: finished, skipped"
    elif [ -f "$dir/config.yaml" ]; then
      echo "[reproduce_toy] $dir: resuming"
      "$PY" -m srft_openrlhf.cli train --resume "$dir"
    else
      echo "[reproduce_toy] $dir: $method, seed $seed, $STEPS steps"
      "$PY" -m srft_openrlhf.cli train --config "$CONFIG" --output-dir "$dir" --set "train.seed=$seed" \
        --set "train.steps=$STEPS" --set "train.lr_warmup_steps=$WARMUP" "${algo[@]}" "$@"
    fi
  done
done
"$PY" -m srft_openrlhf.local.plot --aggregate "$OUT" --table "$OUT/results.md" --out "$OUT/curves.png"
