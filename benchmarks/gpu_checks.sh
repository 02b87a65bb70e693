#!/usr/bin/env bash
# The GPU checks, prepared for a lent GPU machine (the device tool): one short run, ~6 minutes.
#
#   Here, once:   echo /.whl/ >> .git/info/exclude
#                 python3 -m pip download --no-deps --only-binary=:all: -d .whl jaxopt==0.8.5
#   Then:         run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=540)
#
# The machine's image has jax with CUDA, optax, flax, chex and orbax; jaxopt travels as a wheel.
# Results go to $OUT (the device tool's output folder) or benchmarks/gpu-results.
set -uo pipefail
OUT=${OUT:-benchmarks/gpu-results}
mkdir -p "$OUT"
if ! python3 -c "import jaxopt" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/jaxopt-*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax; print(jax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/gpu.txt"
# Correctness first (a few seconds of GPU time): the reference and dtype tests on the GPU.
timeout 60 python3 -m pytest -q -x -p no:cacheprovider tests/test_camegrad.py \
  -k "reference or dtype or scaling or opposite" 2>&1 | tail -5 | tee "$OUT/gpu-tests.log"
# The dual solvers side by side: camegrad's update / the linear update with the iterative
# solver (jaxopt, while loops) and the loop-free one (enumerate), K = 2, 4, 8, P = 1e6..1e8.
timeout 120 python3 benchmarks/run_benchmarks.py --sections solvers --rounds 5 \
  --json "$OUT/gpu-solvers.json" 2>&1 | tee "$OUT/gpu-solvers.log"
# Then the ratios (the three timeouts together stay under 6 minutes).
timeout 170 python3 benchmarks/run_benchmarks.py --sections dual,flat,gram,pytree,family,train \
  --rounds 10 --json "$OUT/gpu-benchmarks.json" 2>&1 | tee "$OUT/gpu-benchmarks.log"
