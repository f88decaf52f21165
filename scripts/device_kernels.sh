#!/usr/bin/env bash
# The kernels on one GPU, in well under 5 minutes: correctness of the Triton / chunked torch /
# fused-linear paths against float64 (the kernel tests), a Triton block-size sweep, then the
# benchmark table (benchmarks/bench_kernels.py).  scripts/device_check.sh runs both parts
# (with the toy training run) and gathers everything into one JSON.
#
#   bash scripts/device_kernels.sh [all|tests|bench]   # from the repository root; default all
#
# tests: pytest over tests/test_kernels.py, tests/test_kernels_linear.py,
#   tests/test_kernels_triton.py and every other test module that uses requires_cuda
#   (skipped on machines without a GPU); writes kernels_pytest.txt, and a JUnit XML report
#   to $KERNELS_JUNIT when that is set.
# bench: writes kernels_bench.json.
# Files go into $OUT when it is set, else into the current directory.  Needs torch with CUDA
# and triton; no network.  $PYTHON (default python3) runs everything; $KERNELS_TEST_TIMEOUT
# and $KERNELS_BENCH_TIMEOUT (seconds, default 150 each) bound the two parts.
# Exit status: non-zero if a test failed, pytest is missing or the benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
DEST="${OUT:-.}"
PART="${1:-all}"
case "$PART" in all | tests | bench) ;; *)
    echo "usage: $0 [all|tests|bench]" >&2
    exit 2
    ;;
esac
mkdir -p "$DEST"
status=0

nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>/dev/null || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available())"

if [ "$PART" != bench ]; then
    if "$PY" -c "import pytest" 2>/dev/null; then
        tests=(tests/test_kernels.py tests/test_kernels_linear.py tests/test_kernels_triton.py)
        for f in $(grep -lw 'requires_cuda' tests/test_*.py); do
            case " ${tests[*]} " in *" $f "*) ;; *) tests+=("$f") ;; esac
        done
        junit=()
        [ -n "${KERNELS_JUNIT:-}" ] && junit=("--junitxml=$KERNELS_JUNIT")
        # Includes the CUDA tests (skipped on machines without a GPU).
        timeout "${KERNELS_TEST_TIMEOUT:-150}" "$PY" -m pytest -q -p no:cacheprovider "${junit[@]}" "${tests[@]}" 2>&1 |
            tee "$DEST/kernels_pytest.txt" | tail -15
        test "${PIPESTATUS[0]}" -eq 0 || status=1
    else
        echo "pytest not installed: no correctness checks (the benchmark measures, it does not check)"
        status=1
    fi
fi

if [ "$PART" != tests ]; then
    # --tune: Triton (BLOCK_V, num_warps) sweep before the table.
    timeout "${KERNELS_BENCH_TIMEOUT:-150}" "$PY" benchmarks/bench_kernels.py --tune --repeats 5 \
        --out "$DEST/kernels_bench.json" || status=1
fi
exit $status
