#!/usr/bin/env bash
# ncu profiles in one device call: the stall and pipe sections plus the
# per-instruction SASS page (execution counts, stall samples) of one kernel.
#   OUT=/tmp/out bash bench/profile_device.sh SHAPE KERNEL_REGEX [patch[+patch]] ...
# SHAPE is profile_one.py's argument (A-F, C-fp8, A-portable, prefill, and the
# serving batches even, random, one10x); each trailing argument names
# docs/experiments patches applied to a copy of the tree first ("main" is the
# tree itself). Writes $OUT/ncu-<SHAPE>-<variant>.txt, .csv and
# -stalls.md (bench/ncu_stalls.py on the csv: totals by reason, top instructions,
# samples per 40-instruction window). NCU_CACHE=none keeps the L2 as the
# kernels before left it (ncu's default, all, flushes it before each
# kernel: a combine's partials then come from DRAM).
set -u
OUT=${OUT:-bench/results/profiles}
mkdir -p "$OUT"
root=$(pwd)
shape=$1 kernel=$2
shift 2
. "$root/bench/variant_lib.sh"
sections="--section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis
          --section MemoryWorkloadAnalysis --section Occupancy --section SourceCounters"
for variant in "${@:-main}"; do
  if ! tree=$(variant_tree "$variant") || ! site=$(install_tree "$tree"); then
    echo "$variant: a patch or the install failed"
    continue
  fi
  stem="$OUT/ncu-$shape-$variant"
  (cd "$tree/bench" && export PYTHONPATH=$site &&
   python3 profile_one.py "$shape" &&  # compiles outside the profiler
   timeout 200 ncu --clock-control none --cache-control "${NCU_CACHE:-all}" -k "regex:$kernel" -c 1 $sections --print-details all \
     -o "$stem" python3 profile_one.py "$shape" >/dev/null 2>&1 &&
   ncu -i "$stem.ncu-rep" --print-details all > "$stem.txt" 2>&1 &&
   ncu -i "$stem.ncu-rep" --page source --print-source sass --csv > "$stem.csv" 2>&1 &&
   python3 "$root/bench/ncu_stalls.py" "$stem.csv" --windows 40 > "$stem-stalls.md" 2>&1)
  rm -f "$stem.ncu-rep"
  echo "$variant: $(grep -m1 "Duration" "$stem.txt")"
done
