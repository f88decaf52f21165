#!/usr/bin/env bash
# The paper's baselines on OpenRLHF's Ray cluster, through the same launcher as SRFT.
#   bash scripts/train_baseline.sh ALGO [srft train options...]
#   ALGO: grpo | luffy | sft | sft_kl | sft_rl (SFT, then GRPO from its model: two jobs)
#   MODEL=qwen2.5-math-1.5b bash scripts/train_baseline.sh luffy      # another model (configs/$MODEL.yaml)
# Layout variables (NODES, GPUS_PER_NODE, COLOCATE, ...) are described in scripts/_launch.sh.
set -euo pipefail
ALGO="${1:?usage: train_baseline.sh grpo|luffy|sft|sft_kl|sft_rl [srft train options...]}"
shift
exec bash "$(dirname "${BASH_SOURCE[0]}")/_launch.sh" "$ALGO" "$@"
