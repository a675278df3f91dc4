"""Cycles from issuing the Hopper kernel's TMA copies to their completion, idle and loaded.

The Hopper kernel's timeline (bench/timeline.py) shows refills landing
2000-3600 cycles after they are issued at config A. This separates the
copy path's own latency from the load: one CTA copying alone (1, 4 or 9
boxes of 64 rows x 128 bytes from random tiles of a 1 GiB matrix, beyond
L2), then one CTA per SM at once, back to back or with idle gaps that set
the demand (config A's kernel asks for ~147 KB per SM every ~7400 cycles);
then the same beside a warpgroup issuing score-shaped MMAs that read
shared memory at its full bandwidth, as the kernel's score phase does while
its refills land.

    python bench/copy_latency.py [--out DIR]      # on a Hopper GPU; prints a table
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cumla import _kernels, _tma

SOURCE = Path(__file__).resolve().parent / "copy_latency.cu"
WIDTH = 576  # DeepSeek's cache row (L + R), 16-bit values
MATRIX_BYTES = 1 << 30
SMEM_BYTES = 11 * 64 * 128 + 1024 + 8  # nine boxes, two MMA operand tiles, alignment, the barrier
REPS = 200
MMA_ROUNDS = 40000  # rounds of 8 MMAs (~256 cycles each): longer than any case's copies

# (name, boxes per copy, CTAs (0: one per SM), idle cycles between copies, MMAs beside)
CASES = [
    ("one CTA, 1 box", 1, 1, 0, False),
    ("one CTA, 4 boxes (a copy group)", 4, 1, 0, False),
    ("one CTA, 9 boxes (a tile)", 9, 1, 0, False),
    ("every SM, 9 boxes, back to back", 9, 0, 0, False),
    ("every SM, 9 boxes, 3700-cycle gaps (config A's demand)", 9, 0, 3700, False),
    ("every SM, 4 boxes, 1600-cycle gaps", 4, 0, 1600, False),
    ("one CTA, 4 boxes, beside score MMAs", 4, 1, 0, True),
    ("one CTA, 9 boxes, beside score MMAs", 9, 1, 0, True),
    ("every SM, 9 boxes, 3700-cycle gaps, beside score MMAs", 9, 0, 3700, True),
]


def kernel_name(boxes: int, mma: bool) -> str:
    return f"copy_latency<{boxes}, {int(mma)}>"


def source() -> str:
    """hopper.cuh (with common.cuh) inlined, then the probe kernel."""
    return _kernels.source("hopper.cuh") + "\n" + SOURCE.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for copy-latency.json")
    args = parser.parse_args()
    import cupy as cp

    names = tuple(dict.fromkeys(kernel_name(boxes, mma) for _, boxes, _, _, mma in CASES))
    module = cp.RawModule(code=source(), options=_kernels.options("sm_90a"), name_expressions=names)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    rows = MATRIX_BYTES // (WIDTH * 2) // 64 * 64
    matrix = cp.random.randint(-2**15, 2**15, size=(rows, WIDTH), dtype=cp.int16)
    tmap = _tma.rows_map(matrix.data.ptr, rows, WIDTH, 64)
    results = []
    print("| case | median cycles | p10 | p90 | GB/s (all CTAs) |")
    print("|---|---|---|---|---|")
    sink = cp.zeros(256, dtype=cp.float32)
    for name, boxes, ctas, gap, mma in CASES:
        ctas = ctas or sms
        kernel = module.get_function(kernel_name(boxes, mma))
        kernel.max_dynamic_shared_size_bytes = SMEM_BYTES
        cycles = cp.zeros(ctas * REPS, dtype=cp.int64)
        call = (tmap, cycles, np.int32(rows // 64), np.int32(REPS), np.int32(gap),
                np.int32(MMA_ROUNDS if mma else 0), sink)
        threads = 256 if mma else 32
        kernel((ctas,), (threads,), call, shared_mem=SMEM_BYTES)  # warm-up (clocks, TLB)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        kernel((ctas,), (threads,), call, shared_mem=SMEM_BYTES)
        end.record()
        end.synchronize()
        seconds = cp.cuda.get_elapsed_time(start, end) / 1e3
        samples = cycles.get().reshape(ctas, REPS)[:, 10:]  # past each CTA's first copies
        p10, median, p90 = (float(v) for v in np.percentile(samples, (10, 50, 90)))
        rate = ctas * REPS * boxes * 64 * 128 / seconds / 1e9  # with MMAs: over the MMAs' longer run
        results.append(dict(case=name, boxes=boxes, ctas=ctas, gap=gap, mma=mma, median=median, p10=p10, p90=p90,
                            gb_s=rate))
        print(f"| {name} | {median:.0f} | {p10:.0f} | {p90:.0f} | {rate:.0f} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "copy-latency.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
