#!/usr/bin/env bash
# One call on a CUDA machine: GPU tests, the benchmark, the warpgroup MMA
# rates, the TMA copy latency and the Hopper kernel's per-step timeline
# (bench/mma_rates.py, bench/copy_latency.py, bench/timeline.py; Hopper
# only), then compute-sanitizer
# on the small every-kernel test, the distributed benchmark and the examples.
#   OUT=/tmp/out bash bench/run_device.sh [pytest -k expression | none] [configs] [sanitize: 1|0]
# Writes to $OUT: gpu-tests.log, bench.log, the results (.md, .json,
# distributed-<N>gpu.json, mma-rates.json and copy-latency.json on Hopper)
# and device.log (GPU, install, MMA rates, copy latency, timeline,
# sanitizer, distributed and example output, in sections), few files so
# that a file-count limit on fetched outputs loses nothing.
# cumla is installed (without dependencies) into a scratch folder first, as a
# user would have it, so the CUDA sources come from the installed package.
# Each stage has a time limit so one hung stage cannot eat the others' time,
# and the whole call ends by DEADLINE seconds (default 570, under a 10-minute
# call limit): a stage gets min(its limit, the time left) and is skipped, with
# a note, when less than 20 s are left. The benchmark saves its results after
# every section, so a stopped run keeps what it measured.
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
log="$OUT/device.log"
section() { printf '\n==== %s\n' "$1" >>"$log"; }
DEADLINE=${DEADLINE:-570}
# limit SECONDS: prints the time a stage may take (its limit or what is left
# before DEADLINE); fails when under 20 s are left.
limit() {
  local left=$((DEADLINE - SECONDS))
  [ "$left" -ge 20 ] || { echo "skipped: ${left} s left before DEADLINE=$DEADLINE" | tee -a "$log" >&2; return 1; }
  echo $(( $1 < left ? $1 : left ))
}
site=$(mktemp -d)
section install
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" . >>"$log" 2>&1 \
  || { cat "$log"; exit 1; }
export PYTHONUNBUFFERED=1 PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
section gpu
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$log"
if [ "${1:-}" != none ] && t=$(limit 330); then
  (cd tests && timeout "$t" python3 -m pytest -q -rs -p no:cacheprovider -m gpu gpu ${1:+-k "$1"} 2>&1 &&
   python3 -m pytest -q -p no:cacheprovider test_kernels_compile.py -k warpgroup 2>&1) | tee "$OUT/gpu-tests.log"
fi
t=$(limit 300) && timeout "$t" python3 bench/bench_gpu.py --out "$OUT" --configs "${2:-ABCDEF}" 2>&1 | tee "$OUT/bench.log"
if [ "$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1)" = 9.0 ]; then
  section "warpgroup MMA rates"
  t=$(limit 60) && timeout "$t" python3 bench/mma_rates.py --out "$OUT" 2>&1 | tee -a "$log"
  section "TMA copy latency, idle and loaded"
  t=$(limit 40) && timeout "$t" python3 bench/copy_latency.py --out "$OUT" 2>&1 | tee -a "$log"
  section "Hopper kernel timeline (config A, then 8 requests on 8 parts: copy latency on a lightly loaded memory)"
  t=$(limit 60) && timeout "$t" python3 bench/timeline.py A 2>&1 | tee -a "$log"
  t=$(limit 40) && timeout "$t" python3 bench/timeline.py A --batch 8 2>&1 | tee -a "$log"
fi
if [ "${3:-1}" = 1 ]; then
  for tool in memcheck racecheck; do
    section "sanitizer $tool"
    t=$(limit 120) || continue
    (cd tests && CUMLA_LINEINFO=1 timeout "$t" compute-sanitizer --tool $tool --error-exitcode 9 \
       python3 -m pytest -q -p no:cacheprovider -m gpu gpu -k test_every_kernel_small 2>&1) \
       | grep -v "Host Frame\|host backtrace" | head -n 60 >>"$log"
  done
  grep -h "SUMMARY" "$log"
fi
section distributed
gpus=$(nvidia-smi -L | wc -l)
for n in 1 $([ "$gpus" -ge 2 ] && echo 2); do
  t=$(limit 150) || break
  timeout "$t" python3 -m cumla.launch -n $n bench/bench_distributed.py --out "$OUT" 2>&1 | tee -a "$log"
done
section examples
if t=$(limit 120); then
  timeout "$t" bash -c "python3 examples/mla_decode.py --batch 8 --seq-len 4096 --heads 128 &&
    python3 examples/serve_loop.py --steps 100 && python3 examples/serve_loop.py --steps 100 --fp8" \
    2>&1 | tr '\r' '\n' | grep -v "steps$" | tee -a "$log"
fi
