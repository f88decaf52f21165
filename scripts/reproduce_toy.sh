#!/usr/bin/env bash
# The paper's comparison (Table 2 layout) and ablations (Table 3 layout) on the toy task,
# with every method tuned the way a paper tunes its baselines:
#   1. sweep: each method at each learning rate of LRS, seed SWEEP_SEED, evaluated on the toy
#      task's validation split (data.eval=toy:validation: 200 problems drawn like the training
#      problems, disjoint from the held-out and training ones, srft_openrlhf/data/toy.py);
#   2. pick each method's best lr (validation accuracy after training; ties: the smaller lr);
#   3. final: each method at its best lr over SEEDS, new runs evaluated on the 400 held-out
#      problems (no sweep run is reused), so the held-out problems only report, never choose.
# Everything else is the quick start's budget (configs/toy_cpu.yaml: steps, prompts per step,
# rollouts, warm-up). A method is "collapsed" only if it collapses at every lr of the sweep.
#   bash scripts/reproduce_toy.sh [OUTPUT_ROOT] [--set key=value ...]   (default runs/reproduce_toy)
# Environment: METHODS (default: srft grpo sft sft_then_rl luffy srft_no_wsft srft_no_wrl),
# LRS (default "1e-4 2e-4 5e-4 1e-3"), SWEEP_SEED (42), SEEDS ("42 1 2"), STEPS (the
# config's), SWITCH (SFT→RL switch step, default STEPS/2), JOBS (runs at once, default 1;
# each run uses one thread), KEEP (checkpoints kept per final run, default 3: what
# `srft analyze trajectory` plots).
# Runs: OUTPUT_ROOT/sweep/METHOD/lr-LR and OUTPUT_ROOT/final/METHOD/seed-N. Finished runs are
# skipped, interrupted ones resumed: re-run the script after an interruption (a final seed-N
# that an older version linked to its sweep run is replaced by a run of its own). At the end:
# OUTPUT_ROOT/results.md + results.json (final table, each row with its lr, and the
# validation sweep) and OUTPUT_ROOT/curves.png (mean ± std over seeds of every method).
# Budget on 2 cores (JOBS=2): about 50 minutes for the 7 methods (28 sweep + 21 final runs);
# 69 minutes with the cores shared with other jobs (docs/results/toy.json: wall_seconds).
set -euo pipefail
OUT="${1:-runs/reproduce_toy}"
shift || true
source "$(dirname "${BASH_SOURCE[0]}")/_cpu_env.sh"
PY="$VENV/bin/python"
CONFIG=configs/toy_cpu.yaml
METHODS="${METHODS:-srft grpo sft sft_then_rl luffy srft_no_wsft srft_no_wrl}"
LRS="${LRS:-1e-4 2e-4 5e-4 1e-3}"
SWEEP_SEED="${SWEEP_SEED:-42}"
SEEDS="${SEEDS:-42 1 2}"
JOBS="${JOBS:-1}"
KEEP="${KEEP:-3}"
read -r CONFIG_STEPS CONFIG_WARMUP < <("$PY" -c "import yaml, sys; t = yaml.safe_load(open(sys.argv[1]))['train']; \
print(t['steps'], t.get('lr_warmup_steps', 0))" "$CONFIG")
STEPS="${STEPS:-$CONFIG_STEPS}"
SWITCH="${SWITCH:-$(( STEPS / 2 ))}"
WARMUP=$(( CONFIG_WARMUP < STEPS ? CONFIG_WARMUP : STEPS ))  # a shortened run keeps a valid warm-up
SAVE_EVERY=$(( STEPS / KEEP > 0 ? STEPS / KEEP : 1 ))
EXTRA=("$@")

# the toy base is built once, before runs start in parallel
"$PY" -c "from srft_openrlhf.data import toy; toy.base_model_path()"

algo_args() {
  case "$1" in
    sft_then_rl|rl_then_sft) echo "--set train.schedule=$1 --set train.switch_step=$SWITCH" ;;
    *) echo "--algo $1" ;;
  esac
}

# one run: METHOD LR SEED DIR [KEEP_CHECKPOINTS [EVAL]]; its log is DIR.log. EVAL: data.eval
# ("-": the config's, i.e. the toy held-out split)
one_run() {
  local method=$1 lr=$2 seed=$3 dir=$4 keep=${5:-1} eval_set=${6:--} split=held-out
  local eval_args=()
  if [ "$eval_set" != "-" ]; then
    eval_args=(--set "data.eval=$eval_set")
    split=$eval_set
  fi
  if [ -L "$dir" ]; then  # an older version's final seed linked to its sweep run
    rm "$dir"
  fi
  if [ -f "$dir/summary.json" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$dir")"
  if [ -f "$dir/config.yaml" ]; then
    echo "[reproduce_toy] $dir: resuming"
    "$PY" -m srft_openrlhf.cli train --resume "$dir" >"$dir.log" 2>&1
  else
    echo "[reproduce_toy] $dir: $method, lr $lr, seed $seed, $STEPS steps"
    # shellcheck disable=SC2046
    "$PY" -m srft_openrlhf.cli train --config "$CONFIG" --output-dir "$dir" $(algo_args "$method") \
      --set "train.seed=$seed" --set "train.lr=$lr" --set "train.steps=$STEPS" \
      --set "train.lr_warmup_steps=$WARMUP" --set "train.keep_checkpoints=$keep" \
      --set "train.save_every=$SAVE_EVERY" --set "train.eval_every=$SAVE_EVERY" "${eval_args[@]}" \
      "${EXTRA[@]}" >"$dir.log" 2>&1
  fi
  echo "[reproduce_toy] $dir: $("$PY" -c "import json, sys; s = json.load(open(sys.argv[1])); \
print(f\"{sys.argv[2]} {s['accuracy_before']:.1%} -> {s['accuracy_after']:.1%} in {s['wall_seconds']:.0f} s\")" \
    "$dir/summary.json" "$split")"
}

# run "METHOD LR SEED DIR KEEP [EVAL]" lines, JOBS at a time; fail if any run failed
run_all() {
  local failed=0 line
  while read -r line; do
    [ -z "$line" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || failed=1; done
    # shellcheck disable=SC2086
    one_run $line &
  done
  while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
  if [ "$failed" -ne 0 ]; then
    echo "[reproduce_toy] some runs failed: see the .log next to each run folder under $OUT" >&2
    exit 1
  fi
}

# sweep runs keep one checkpoint (to resume) and are evaluated on the validation split
run_all < <(for method in $METHODS; do for lr in $LRS; do
  echo "$method $lr $SWEEP_SEED $OUT/sweep/$method/lr-$lr 1 toy:validation"; done; done)

declare -A BEST
for method in $METHODS; do
  BEST[$method]=$("$PY" -m srft_openrlhf.runs.results best-lr "$OUT/sweep/$method")
  echo "[reproduce_toy] $method: best lr ${BEST[$method]} (validation accuracy)"
done

run_all < <(for method in $METHODS; do for seed in $SEEDS; do
  echo "$method ${BEST[$method]} $seed $OUT/final/$method/seed-$seed $KEEP"; done; done)

"$PY" -m srft_openrlhf.runs.results report "$OUT"
