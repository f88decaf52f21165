#!/usr/bin/env bash
# Shared launcher of the cluster (openrlhf backend) training scripts: SRFT and the baselines.
#   bash scripts/_launch.sh ALGO [srft train options...]      ALGO: srft grpo luffy sft sft_kl sft_rl
# Environment (all optional):
#   MODEL           qwen2.5-math-7b (default) | qwen2.5-math-1.5b | llama-3.1-8b -> configs/$MODEL.yaml
#   NODES, GPUS_PER_NODE   the Ray cluster (1 × 8); with NODES > 1 run `ray start` on every node
#                   first (docs/cluster.md) or set RAY_ADDRESS
#   COLOCATE        0 (default): async generation, vLLM on half of the GPUs, DeepSpeed on the rest;
#                   1: sync, vLLM and DeepSpeed share every GPU (vLLM sleeps while training)
#   VLLM_TP         vLLM tensor parallel size (1); VLLM_ENGINES: engines (from the GPUs and COLOCATE)
#   ZERO_STAGE, MICRO_BATCH   DeepSpeed ZeRO stage / micro-batch (from the config)
#   MODELS          where models live (/data/models); BASE_MODEL, PREPARED_MODEL override the folders
#   OUTPUT_DIR      the run folder (runs/$ALGO-$MODEL)
#   SFT_STEPS, RL_STEPS   the two phases of sft_rl (350 + 150, as in the paper's Fig. 5)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALGO="${1:?usage: _launch.sh ALGO [srft train options...]}"
shift
MODEL="${MODEL:-qwen2.5-math-7b}"
CONFIG="$ROOT/configs/$MODEL.yaml"
[[ -f "$CONFIG" ]] || { echo "_launch.sh: no config $CONFIG (MODEL=$MODEL)" >&2; exit 2; }
MODELS="${MODELS:-/data/models}"

# ---- the model: the Qwen2.5-Math models get rope_theta 40000 and 16384 positions (paper, App. B)
case "$MODEL" in
  qwen2.5-math-7b)   HUB_ID=Qwen/Qwen2.5-Math-7B;   PREPARE=1 ;;
  qwen2.5-math-1.5b) HUB_ID=Qwen/Qwen2.5-Math-1.5B; PREPARE=1 ;;
  *)                 HUB_ID="";                     PREPARE=0 ;;
esac
MODEL_ARGS=()
if [[ "$PREPARE" == 1 ]]; then
  BASE_MODEL="${BASE_MODEL:-$MODELS/${HUB_ID#*/}}"
  PREPARED_MODEL="${PREPARED_MODEL:-$MODELS/${HUB_ID#*/}-rope40k-16k}"
  if [[ ! -f "$PREPARED_MODEL/config.json" ]]; then
    if [[ ! -f "$BASE_MODEL/config.json" ]]; then
      echo "_launch.sh: downloading $HUB_ID to $BASE_MODEL" >&2
      hf download "$HUB_ID" --local-dir "$BASE_MODEL"
    fi
    srft prepare-model "$BASE_MODEL" "$PREPARED_MODEL" --rope-theta 40000 --max-position-embeddings 16384
  fi
  MODEL_ARGS=(--set "model.path=$PREPARED_MODEL")
fi

# ---- the cluster: GPUs for vLLM and for DeepSpeed
NODES="${NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
VLLM_TP="${VLLM_TP:-1}"
COLOCATE="${COLOCATE:-0}"
TOTAL=$((NODES * GPUS_PER_NODE))
if [[ "$COLOCATE" == 1 ]]; then
  VLLM_ENGINES="${VLLM_ENGINES:-$((TOTAL / VLLM_TP))}"
  LAYOUT_ARGS=(--set cluster.colocate_all=true --set train.async_enable=false)
else
  if (( TOTAL < 2 )); then
    echo "_launch.sh: async generation needs GPUs for vLLM and for training; with one GPU use COLOCATE=1" >&2
    exit 2
  fi
  VLLM_ENGINES="${VLLM_ENGINES:-$((TOTAL / 2 / VLLM_TP))}"
  LAYOUT_ARGS=(--set cluster.colocate_all=false)
fi
LAYOUT_ARGS+=(--set "cluster.nodes=$NODES" --set "cluster.gpus_per_node=$GPUS_PER_NODE"
              --set "cluster.vllm_num_engines=$VLLM_ENGINES" --set "cluster.vllm_tensor_parallel_size=$VLLM_TP")
[[ -n "${ZERO_STAGE:-}" ]] && LAYOUT_ARGS+=(--set "train.zero_stage=$ZERO_STAGE")
[[ -n "${MICRO_BATCH:-}" ]] && LAYOUT_ARGS+=(--set "train.micro_batch_size=$MICRO_BATCH")
if [[ -n "${RAY_ADDRESS:-}" ]]; then
  LAYOUT_ARGS+=(--set "cluster.ray_address=$RAY_ADDRESS")
elif (( NODES > 1 )); then
  LAYOUT_ARGS+=(--set cluster.ray_address=auto)  # the cluster `ray start` made (docs/cluster.md)
fi

OUTPUT_DIR="${OUTPUT_DIR:-runs/$ALGO-$MODEL}"
train() {  # train OUTPUT_DIR [srft train options...]
  local out="$1"
  shift
  srft train --backend openrlhf --config "$CONFIG" "${MODEL_ARGS[@]}" "${LAYOUT_ARGS[@]}" --output-dir "$out" "$@"
}
# The paper's SFT baseline: lr 5e-6, linear schedule with 10% warmup, 3 epochs of the 46k set
# (1080 steps of 128). Generation still runs (1 rollout per prompt) and logs the policy's reward.
SFT_ARGS=(--set rollout.n_samples_per_prompt=1 --set train.lr=5e-6 --set "cluster.extra_args=[--actor.lr_scheduler, linear]")
sft_steps() { echo --set "train.steps=$1" --set "train.lr_warmup_steps=$(($1 / 10))"; }

case "$ALGO" in
  srft|grpo|luffy) train "$OUTPUT_DIR" --algo "$ALGO" "$@" ;;
  sft|sft_kl)      train "$OUTPUT_DIR" --algo "$ALGO" "${SFT_ARGS[@]}" $(sft_steps "${SFT_STEPS:-1080}") "$@" ;;
  sft_rl)  # SFT -> RL: two jobs, the second starts from the first one's final model
    train "$OUTPUT_DIR/sft" --algo sft "${SFT_ARGS[@]}" $(sft_steps "${SFT_STEPS:-350}") "$@"
    MODEL_ARGS=(--set "model.path=$(cd "$OUTPUT_DIR/sft" && pwd)/model")
    train "$OUTPUT_DIR/rl" --algo grpo --set "train.steps=${RL_STEPS:-150}" "$@" ;;
  *) echo "_launch.sh: unknown ALGO '$ALGO' (srft grpo luffy sft sft_kl sft_rl)" >&2; exit 2 ;;
esac
