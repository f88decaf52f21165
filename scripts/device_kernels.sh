#!/usr/bin/env bash
# The kernels on one GPU, in well under 5 minutes: correctness of the Triton / chunked torch /
# fused-linear paths against float64 (the kernel tests), a Triton block-size sweep, then the
# benchmark table (benchmarks/bench_kernels.py).
#
#   bash scripts/device_kernels.sh            # from the repository root
#
# Writes kernels_bench.json (and kernels_pytest.txt when pytest is installed) into $OUT
# when it is set, else into the current directory.  Needs torch with CUDA and triton;
# no network.  Exit status: non-zero if a test failed, pytest is missing or the benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
DEST="${OUT:-.}"
mkdir -p "$DEST"
status=0

nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available())"

if "$PY" -c "import pytest" 2>/dev/null; then
    # Includes the CUDA tests of tests/test_kernels_triton.py (skipped on machines without a GPU).
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kernels_linear.py \
        tests/test_kernels_triton.py 2>&1 | tee "$DEST/kernels_pytest.txt" | tail -15
    test "${PIPESTATUS[0]}" -eq 0 || status=1
else
    echo "pytest not installed: no correctness checks (the benchmark measures, it does not check)"
    status=1
fi

# --tune: Triton (BLOCK_V, num_warps) sweep before the table.
timeout 150 "$PY" benchmarks/bench_kernels.py --tune --repeats 5 --out "$DEST/kernels_bench.json" || status=1
exit $status
