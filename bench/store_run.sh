#!/usr/bin/env bash
# Stores a full run of bench/run_device.sh (its $OUT, fetched to RUN) in
# bench/results as <date>-<gpu>.md, .json, -device.log, -gpu-tests.log,
# -copy-latency.json, -mma-rates.json, -distributed-1gpu.json and
# -examples.log (device.log's "==== examples" section). A run already
# stored under those names (the same day and GPU) is renamed first, to
# <date>-<gpu>-OLD_TAG* (git mv), so that no result is overwritten.
#   bash bench/store_run.sh RUN OLD_TAG        (e.g. OLD_TAG=v40)
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash bench/store_run.sh RUN OLD_TAG" >&2; exit 2; }
run=$1 old=$2
results=$(cd "$(dirname "$0")" && pwd)/results
mds=("$run"/*-*.md)
[ ${#mds[@]} -eq 1 ] && [ -e "${mds[0]}" ] || { echo "expected one <date>-<gpu>.md in $run" >&2; exit 1; }
prefix=$(basename "${mds[0]}" .md)
# The run's files, by their names in bench/results.
declare -A from=([.md]="$prefix.md" [.json]="$prefix.json" [-device.log]=device.log
                 [-gpu-tests.log]=gpu-tests.log [-copy-latency.json]=copy-latency.json
                 [-mma-rates.json]=mma-rates.json [-distributed-1gpu.json]=distributed-1gpu.json)
for suffix in "${!from[@]}" -examples.log; do
  if [ -e "$results/$prefix$suffix" ] && [ -e "$results/$prefix-$old$suffix" ]; then
    echo "$prefix-$old$suffix exists already: pick another OLD_TAG" >&2
    exit 1
  fi
done
for suffix in "${!from[@]}" -examples.log; do
  if [ -e "$results/$prefix$suffix" ]; then git -C "$results" mv "$prefix$suffix" "$prefix-$old$suffix"; fi
done
for suffix in "${!from[@]}"; do
  if [ -e "$run/${from[$suffix]}" ]; then cp "$run/${from[$suffix]}" "$results/$prefix$suffix"; fi
done
sed -n '/^==== examples/,$p' "$run/device.log" | tail -n +2 >"$results/$prefix-examples.log"
echo "stored $prefix (an earlier run of the day, if any, as $prefix-$old)"
