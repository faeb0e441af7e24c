#!/usr/bin/env bash
# The whole GPU session in one call, from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh
#
# 1. builds and installs the package with CUDA kernels for sm_90 only
#    (pip install --no-build-isolation --no-deps .; log $OUT/pip.log);
# 2. runs the tests with JAX_DEQUANT_REQUIRE_GPU=1 (log $OUT/pytest.log);
# 3. runs the benchmark, python -m jax_dequant.bench: $OUT/bench.txt (table),
#    bench.json, bench.png, bench.md (the table in Markdown, for README.md);
# 4. Nsight Compute on our kernels and XLA's for the ops in JDQ_NCU_OPS and
#    the shapes in JDQ_NCU_SHAPES (default 16384x8192; bf16 unless a shape is
#    written dtype:shape, e.g. f32:16384x8192) (benchmarks/ncu_target.py):
#    ncu_<op>_<dtype>_<shape>.txt; JDQ_NCU_EXTRA adds ncu flags (e.g.
#    "--cache-control none --section SourceCounters");
# 5. with "tune" in JDQ_STEPS, the launch-shape sweep benchmarks/tune_kernels.cu
#    (parts JDQ_TUNE_PARTS, default all; compiled beside the package build):
#    tune.txt;
# A summary comes last. At most 8 files come back from the lent GPU machine,
# so the small logs (gpu.txt, pip.log, bench.log, tune.txt, ncu_*.txt) are
# packed into $OUT/logs.tgz at the end. Every step runs under a share of one time budget
# (JDQ_BUDGET_S, default 510 s, so the script stays under 9 minutes); a step
# that no longer fits is skipped and says so. On an H100 the build takes about
# 2 minutes, the GPU tests (-m gpu) 5 and the benchmark 3: more than one
# 10-minute call, so JDQ_STEPS (default "tests bench ncu") picks the steps of
# this call, e.g. JDQ_STEPS=tests, then JDQ_STEPS="bench ncu" on the same
# machine (the build always runs). JDQ_PYTEST_ARGS (default -q -n 4: pytest-xdist)
# and JDQ_BENCH_ARGS (default: the full set) change steps 2 and 3.
set -uo pipefail
export PYTHONUNBUFFERED=1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/gpu_out}
mkdir -p "$OUT"
BUDGET=${JDQ_BUDGET_S:-510}
START=$(date +%s)
PY=$(command -v python3)
STEPS=" ${JDQ_STEPS:-tests bench ncu} "
TUNE_PARTS=${JDQ_TUNE_PARTS:-0 1 2 3 4}
wants() { [[ $STEPS == *" $1 "* ]]; }

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
step() { echo; echo "== [$(elapsed)s] $*"; }
# cap SECONDS RESERVE: SECONDS, or what is left after keeping RESERVE for later
# steps, but at least 10 (timeout 0 would mean no limit at all).
cap() {
  local want=$1 reserve=$2 room
  room=$(($(left) - reserve))
  ((room < want)) && want=$room
  ((want < 10)) && want=10
  echo "$want"
}

cd "$ROOT"
step "machine"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version \
  --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" 2>&1 | tail -1

step "build (sm_90)"
if wants tune; then
  # The sweep programs compile beside the package (plain nvcc, one per part).
  for part in $TUNE_PARTS; do
    nvcc -O3 -std=c++17 -arch=sm_90 --fmad=false -Icuda -DTUNE_PART=$part \
      benchmarks/tune_kernels.cu -o /tmp/jdq_tune_$part >/tmp/jdq_tune_$part.log 2>&1 &
  done
fi
# The build keeps 240 s for the later steps, but never from a budget under
# 480 s: without a build no step runs.
BUILD_RESERVE=$((BUDGET >= 480 ? 240 : 0))
JAX_DEQUANT_CUDA=ON JAX_DEQUANT_CUDA_ARCHITECTURES=90-real CMAKE_BUILD_PARALLEL_LEVEL=16 \
  timeout "$(cap 240 $BUILD_RESERVE)" "$PY" -m pip install --no-build-isolation --no-deps --no-index . \
  >"$OUT/pip.log" 2>&1
BUILD_RC=$?
tail -n 2 "$OUT/pip.log"
echo "pip install exit code $BUILD_RC"
(cd /tmp && "$PY" -c "import jax_dequant as j; print('installed:', j.__file__, j.BUILD_INFO)") 2>&1 | tail -1

step "tests (JAX_DEQUANT_REQUIRE_GPU=1)"
PYTEST_RC=skipped
if ((BUILD_RC == 0)) && wants tests; then
  # From /tmp, so that the installed package is imported, not the source tree.
  # Several pytest workers share the GPU: none may preallocate most of its memory.
  # The tests keep 230 s for the steps after them only when one of those is wanted.
  TESTS_RESERVE=10
  { wants tune || wants bench || wants ncu; } && TESTS_RESERVE=230
  (cd /tmp && JAX_DEQUANT_REQUIRE_GPU=1 XLA_PYTHON_CLIENT_PREALLOCATE=false \
    timeout "$(cap 270 $TESTS_RESERVE)" "$PY" -m pytest -p no:cacheprovider \
    ${JDQ_PYTEST_ARGS:--q -n 4} "$ROOT/tests" >"$OUT/pytest.log" 2>&1)
  PYTEST_RC=$?
  grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -n 30
  tail -n 1 "$OUT/pytest.log"
  ((PYTEST_RC == 124)) && echo "pytest was stopped by its time limit; see $OUT/pytest.log"
fi

step "launch-shape sweep (benchmarks/tune_kernels.cu)"
if wants tune; then
  wait  # the sweep programs' builds
  : >"$OUT/tune.txt"
  for part in $TUNE_PARTS; do
    if [[ -x /tmp/jdq_tune_$part ]]; then
      timeout "$(cap 60 200)" /tmp/jdq_tune_$part >>"$OUT/tune.txt" 2>&1
      echo "tune part $part exit code $?"
    else
      echo "tune part $part did not build:"; tail -n 20 /tmp/jdq_tune_$part.log
    fi
  done
  grep "^#" "$OUT/tune.txt"
fi

step "benchmark"
BENCH_RC=skipped
if ((BUILD_RC == 0)) && wants bench; then
  (cd "$OUT" && timeout "$(cap 230 30)" "$PY" -m jax_dequant.bench --platform gpu \
    --json "$OUT/bench.json" --png "$OUT/bench.png" --markdown "$OUT/bench.md" \
    ${JDQ_BENCH_ARGS:-} >"$OUT/bench.txt" 2>"$OUT/bench.log")
  BENCH_RC=$?
  cat "$OUT/bench.txt"
  ((BENCH_RC == 0)) || { echo "benchmark exit code $BENCH_RC; last lines of its log:"; tail -n 15 "$OUT/bench.log"; }
fi

step "Nsight Compute: ours then XLA's, for each op of JDQ_NCU_OPS and [dtype:]shape of JDQ_NCU_SHAPES"
# Default: the op that misses a goal (dynamic quantize) and the backward.
for op in ${JDQ_NCU_OPS:-quantize_dynamic dequantize_bwd}; do
  for item in ${JDQ_NCU_SHAPES:-16384x8192}; do
    dtype=bf16
    shape=$item
    if [[ $item == *:* ]]; then
      dtype=${item%%:*}
      shape=${item#*:}
    fi
    if ! wants ncu; then
      echo "skipped: not in JDQ_STEPS"
    elif ((BUILD_RC != 0)); then
      echo "skipped: no build"
    elif ! command -v ncu >/dev/null; then
      echo "skipped: ncu not found"
    elif (($(left) < 60)); then
      echo "skipped $op $dtype $shape: $(left) s left"
    else
      # No preallocation: ncu saves and restores the allocated device memory
      # around every replayed pass, and JAX would otherwise hold most of it.
      report="$OUT/ncu_${op}_${dtype}_$shape.txt"
      (cd /tmp && XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$(cap 120 10)" \
        ncu --kernel-name-base demangled --clock-control none ${JDQ_NCU_EXTRA:-} \
        -k 'regex:RowwiseMap|QuantizeDynamic|DequantizeGrad|Dscale|Backward|fusion|reduce' -c 3 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats \
        --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum,sm__cycles_active.max,smsp__inst_executed.sum \
        "$PY" "$ROOT/benchmarks/ncu_target.py" "$op" "$dtype" "${shape%x*}" "${shape#*x}" >"$report" 2>&1)
      echo "ncu $op $dtype $shape exit code $? (report: $report)"
      grep -E "^  [A-Za-z_].*\(|Duration|DRAM Throughput|dram__bytes|sm__cycles_active|smsp__inst_executed|Achieved Occupancy|Registers Per|ERR_" \
        "$report" | head -n 40
    fi
  done
done


step "summary"
echo "gpu: $(tail -n 1 "$OUT/gpu.txt")"
echo "build: pip exit code $BUILD_RC"
echo "tests: exit code $PYTEST_RC; $(tail -n 1 "$OUT/pytest.log" 2>/dev/null)"
echo "benchmark: exit code $BENCH_RC"
sed -n '/^Goals:/,/^wrote/p' "$OUT/bench.txt" 2>/dev/null | grep -v "^wrote"
grep -E "^(timing|copy bandwidth):" "$OUT/bench.txt" 2>/dev/null
# At most 8 files come back from the GPU machine: the small logs travel packed.
SMALL_LOGS="gpu.txt pip.log $(cd "$OUT" && ls bench.log tune.txt ncu_*.txt 2>/dev/null | tr '\n' ' ')"
(cd "$OUT" && tar czf logs.tgz $SMALL_LOGS && rm -f $SMALL_LOGS)
echo "files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
echo "total $(elapsed) s"
