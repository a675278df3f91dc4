#!/usr/bin/env bash
# Kernel variants side by side in one device call: the tree as it is, then
# each docs/experiments/*.patch applied to a copy of it. For each: the GPU
# tests that cover the Hopper kernel (its Hypothesis test, DeepSeek dims with
# every split, the every-kernel test, graph capture) and the core benchmark.
#   OUT=/tmp/out [VARIANTS="main fp8-fast-convert"] [BENCH_ARGS=...] [TESTS=...] bash bench/run_variants.sh [configs]
# VARIANTS picks some ("main" is the tree itself, "a+b" patches a then b,
# "ablations/x" a timing ablation of docs/experiments/ablations/; default:
# main and each patch of docs/experiments/), e.g. to split
# them over calls of limited length (~1.5 min a variant). BENCH_ARGS are
# bench_gpu.py's options (default "--core-only --no-baseline"; "--no-baseline"
# adds the FP8, uneven-batch, head-slice and page-size rows, ~1.5 min more;
# "--core-only --no-baseline --extras fp8,decompressed" picks some of them);
# TESTS the pytest -k expression of the GPU tests (default "hopper or
# every_kernel or graph"; add "or fp8" for kernels that read FP8; "none" runs
# no tests, for timing ablations whose results are wrong on purpose);
# TESTS_S the tests' time limit (default 260 s: the 214 tests of "latent or
# fp8 or every_kernel or graph" took over 200 s in session 15); BENCH_S the
# benchmark's (default 300 s; ~90 s bounds timing-only calls); SPLIT_COSTS=X
# runs bench/split_costs.py at configs X (and the serving batches) on each
# variant's install, its further words passed on ("D --even 8x16384"); RACECHECK=N runs compute-sanitizer racecheck N times on the small
# every-kernel test of each variant (its summaries are printed); TIMELINE=X
# prints each variant's Hopper timeline at config X (bench/timeline.py's
# arguments: "A C --table sequential" runs A and C with that option); TESTED
# names the variants that run TESTS and RACECHECK, each the first time it
# runs (default: every variant, every time), the others are timed only
# (TESTS=none: no variant runs either). Writes
# $OUT/<variant>/ (benchmark .md/.json; "_" for the "+" of a+b) and prints one table per variant; a
# variant whose tests fail is not benchmarked. A variant is started only
# while VARIANT_S seconds (default 160: tests, one racecheck and the FP8
# rows) are left before DEADLINE (default 570, under a 10-minute call), so
# the ones that ran report before the call's limit.
set -u
DEADLINE=${DEADLINE:-570}
OUT=${OUT:-bench/results/variants}
mkdir -p "$OUT"
root=$(pwd)
configs=${1:-ABCDEF}
. "$root/bench/variant_lib.sh"

run_variant() {  # name, tree
  # Output files take "_" for the "+" of combined variants: a remote runner
  # may not return names with "+" (session 13 lost a call's files to it).
  local name=$1 tree=$2 site start=$SECONDS stem="$OUT/${1//+/_}"
  mkdir -p "$(dirname "$stem")"  # names in a folder: ablations/x
  if ! site=$(install_tree "$tree"); then
    echo "$name: install failed"
    return
  fi
  local tests=${TESTS:-}
  if [ -n "${TESTED+x}" ]; then
    case " $TESTED " in *" $name "*) TESTED=$(echo " $TESTED " | sed "s| $name | |") ;; *) tests=none ;; esac
  fi
  if [ "$tests" = none ]; then
    echo "$name: no tests (timing only)"
  elif ! (cd "$tree/tests" && PYTHONPATH=$site timeout "${TESTS_S:-260}" python3 -m pytest -q -x -p no:cacheprovider -m gpu gpu \
          -k "${TESTS:-hopper or every_kernel or graph}" >"$stem-tests.log" 2>&1); then
    echo "$name: GPU tests FAILED"; tail -n 15 "$stem-tests.log"
    return
  else
    echo "$name: $(tail -n 1 "$stem-tests.log")"
  fi
  [ "$tests" = none ] || for _ in $(seq "${RACECHECK:-0}"); do
    (cd "$tree/tests" && PYTHONPATH=$site timeout 120 compute-sanitizer --tool racecheck python3 -m pytest -q \
       -p no:cacheprovider -m gpu gpu -k test_every_kernel_small 2>&1) | grep "RACECHECK SUMMARY" | sed "s|^|$name |"
  done
  # BENCH_S bounds the benchmark: a kernel that hangs would hold it to the
  # limit (session 32 lost 300 s of a call to one). Its log is kept; a run
  # that stops or fails shows its end.
  local rc=0
  (cd "$tree" && PYTHONPATH=$site timeout "${BENCH_S:-300}" python3 bench/bench_gpu.py \
     ${BENCH_ARGS:---core-only --no-baseline} --configs "$configs" --out "$stem") >"$stem-bench.log" 2>&1 || rc=$?
  grep -E "^\| ([A-F]|even|random|one|[0-9]+\.[0-9]) " "$stem-bench.log" | sed "s|^|$name |"
  if [ "$rc" = 124 ]; then
    echo "$name: benchmark stopped at BENCH_S=${BENCH_S:-300} s (a hang?)"
  elif [ "$rc" != 0 ]; then
    echo "$name: benchmark failed (rc $rc):"; tail -n 5 "$stem-bench.log"
  fi
  if [ -n "${SPLIT_COSTS:-}" ]; then
    (cd "$tree/bench" && PYTHONPATH=$site timeout 150 python3 split_costs.py --configs $SPLIT_COSTS \
       --out "$stem-split" 2>&1) | tail -n 25 | sed "s|^|$name |"
  fi
  if [ -n "${TIMELINE:-}" ]; then
    (cd "$tree" && PYTHONPATH=$site timeout 180 python3 bench/timeline.py $TIMELINE 2>&1) | sed "s|^|$name |"
  fi
  echo "$name: $((SECONDS - start)) s"
}

# The variants: VARIANTS as given (combinations "a+b" included), else main and
# every patch.
names=${VARIANTS:-main $(cd "$root/docs/experiments" 2>/dev/null && ls *.patch 2>/dev/null | sed 's/\.patch$//')}
for name in $names; do
  if [ $((SECONDS + ${VARIANT_S:-160})) -gt "$DEADLINE" ]; then
    echo "$name: not started, $((DEADLINE - SECONDS)) s left before DEADLINE=$DEADLINE (VARIANT_S=${VARIANT_S:-160})"
    continue
  fi
  if ! tree=$(variant_tree "$name"); then
    echo "$name: a patch is missing or does not apply"
    continue
  fi
  run_variant "$name" "$tree"
done
