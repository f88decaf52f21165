#!/usr/bin/env bash
# One GPU check, one JSON ($OUT/device_check.json; ./device_check_out when $OUT is unset):
# environment, the CUDA/kernel tests (scripts/device_kernels.sh tests, with pytest), the kernel
# benchmark (scripts/device_kernels.sh bench), the toy base model, and a short toy training run
# on the GPU with the Triton kernels and again with the chunked torch kernels, with per-step
# |Δ loss| between the two.  Needs only torch, triton and transformers (and what they pull in:
# PyYAML, numpy, tqdm, safetensors); no network; ~4-6 min on one H100/H200.
#
#   bash scripts/device_check.sh                     # from anywhere; extra flags go to device_check.py
#   bash scripts/device_check.sh --steps 4 --parts tests,toy --budget 300
#   bash scripts/device_check.sh --allow-no-gpu      # CPU smoke: GPU parts "no_gpu", 2-step CPU toy run
#   bash scripts/device_check.sh --allow-no-gpu --cpu-triton   # + the Triton toy run interpreted (~1 min)
#
# Device tool: run `bash scripts/device_check.sh` with timeout_s 540 (the parts share a 420 s
# budget; each part has its own timeout, and the JSON is rewritten after every part).  Optional
# carries: .cache/srft-openrlhf (a prebuilt toy base, saves ~1-2 min: build it here with
# `SRFT_CACHE=.cache/srft-openrlhf python -c "from srft_openrlhf.data.toy import base_model_path as
# b; b()"`), and .whl (pytest wheels, only for a machine without pytest).  Also writes
# device_check.log, kernels_pytest.txt and kernels_bench.json there.  Exit status: 0 all parts
# passed, 1 a part failed / timed out / could not run (pytest missing included), 2 no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
export PYTHON="$PY"
export OUT="${OUT:-$PWD/device_check_out}"
WORK="${DEVICE_CHECK_WORK:-/tmp/srft-device-check}"
WHEELS="${DEVICE_CHECK_WHEELS:-.whl}"
mkdir -p "$OUT" "$WORK"

# pytest from carried wheels (pytest, pluggy, iniconfig, packaging), only where none is installed;
# appended to the path so that the machine's own packages win.
if ! "$PY" -c "import pytest" 2>/dev/null && compgen -G "$WHEELS/pytest-*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$WHEELS"/*.whl && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

exec "$PY" scripts/device_check.py --out "$OUT" --work "$WORK" --python "$PY" "$@"
