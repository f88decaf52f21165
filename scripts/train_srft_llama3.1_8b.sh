#!/usr/bin/env bash
# SRFT on LLaMA-3.1-8B-Instruct with configs/llama-3.1-8b.yaml, on OpenRLHF's Ray cluster (docs/cluster.md).
#   bash scripts/train_srft_llama3.1_8b.sh                               # one node of 8 GPUs
#   NODES=8 GPUS_PER_NODE=8 bash scripts/train_srft_llama3.1_8b.sh       # after `ray start` on 8 nodes
#   bash scripts/train_srft_llama3.1_8b.sh --set train.steps=10          # any `srft train` option
# Layout variables (COLOCATE, VLLM_TP, VLLM_ENGINES, ZERO_STAGE, MICRO_BATCH, MODELS, OUTPUT_DIR)
# are described in scripts/_launch.sh.
set -euo pipefail
MODEL=llama-3.1-8b exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" srft "$@"
