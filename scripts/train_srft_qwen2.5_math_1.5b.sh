#!/usr/bin/env bash
# SRFT on Qwen2.5-Math-1.5B with configs/qwen2.5-math-1.5b.yaml, on OpenRLHF's Ray cluster (docs/cluster.md).
#   bash scripts/train_srft_qwen2.5_math_1.5b.sh                               # one node of 8 GPUs
#   NODES=8 GPUS_PER_NODE=8 bash scripts/train_srft_qwen2.5_math_1.5b.sh       # after `ray start` on 8 nodes
#   bash scripts/train_srft_qwen2.5_math_1.5b.sh --set train.steps=10          # any `srft train` option
# Layout variables (COLOCATE, VLLM_TP, VLLM_ENGINES, ZERO_STAGE, MICRO_BATCH, MODELS, OUTPUT_DIR)
# are described in scripts/_launch.sh.
set -euo pipefail
MODEL=qwen2.5-math-1.5b exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" srft "$@"
