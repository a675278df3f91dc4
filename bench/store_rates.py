"""What a 64 x 512 output tile's stores cost by their form, every SM at once.

The Hopper kernel's epilogue writes each segment's outputs from the wgmma
accumulators: 64 rows x 512 values a CTA (64 KB in 16-bit, 128 KB as the
float32 partials of split requests), every thread a few bytes of 8 rows a
store. Without those stores config A's CTAs end ~6 us sooner with the same
pairs (session 37's timeline of ablate-sm90-nooutput). This times the
stores alone, as bench/store_rates.cu's patterns: the kernel's fragment
forms, row-contiguous 16-byte stores, fragments transposed in each quad by
shuffles (the kernel's form since v50), and shared-memory staging with
bulk copies. Three loads: one CTA
per SM writing its tile once (the epilogue's burst; the cost over a launch
that stores nothing), the same 16 times over (the sustained rate), and one
CTA alone 16 times (one SM's own path):

    python bench/store_rates.py [--out DIR]      # on a Hopper GPU; prints a table

On the H200 (session 37, bench/results/2026-12-02-NVIDIA-H200-store-rates.json):
the kernel's 16-bit fragments 10.1 us for 132 x 64 KB (0.86 TB/s), float32
fragments (whole 32-byte sectors a quad) 2.9 us for twice the bytes, 16-byte
row stores 3.0, shared-memory staging 3.9; the quad transposition 5.5 in a
three-exchange form measured then. In that build ptxas split one 16-byte
store of each row of patterns 2 and 4 into four 4-byte ones (addresses in
elements); they are indexed in 16-byte units now, and pattern 4 runs the
kernel's two-exchange transpose_quad (tests/test_kernels_compile.py checks
the store forms).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cumla import _kernels

SOURCE = Path(__file__).resolve().parent / "store_rates.cu"
ROWS, COLS = 64, 512
STAGED_BYTES = ROWS * (2 * COLS + 16)  # pattern 5's padded rows
ROUNDS = 16
NONE = 6
PATTERNS = {0: ("fragments, 16-bit (the kernel's outputs)", 2), 1: ("fragments, float32 (the kernel's partials)", 4),
            2: ("rows, 16-bit, 16 B a thread", 2), 3: ("rows, float32, 16 B a thread", 4),
            4: ("fragments transposed in quads, 16-bit, 16 B a thread", 2),
            5: ("staged in shared memory, bulk copies of 512 B", 2), NONE: ("nothing stored", 2)}


def source() -> str:
    """hopper.cuh (with common.cuh) inlined, then the probe kernel."""
    return _kernels.source("hopper.cuh") + "\n" + SOURCE.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for store-rates.json")
    args = parser.parse_args()
    import cupy as cp
    from bench_gpu import graph_time_us  # beside this file; imports CuPy

    names = tuple(f"store_rates<{p}>" for p in PATTERNS)
    module = cp.RawModule(code=source(), options=_kernels.options("sm_90a"), name_expressions=names)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    out = cp.zeros(sms * ROWS * COLS, dtype=cp.float32)  # room for float32 tiles

    def time_us(pattern: int, ctas: int, rounds: int) -> float:
        kernel = module.get_function(f"store_rates<{pattern}>")
        kernel.max_dynamic_shared_size_bytes = STAGED_BYTES
        call = (out, np.int32(rounds), np.int64(0), np.float32(1e-3))
        return graph_time_us(lambda: kernel((ctas,), (256,), call, shared_mem=STAGED_BYTES), calls=20)

    empty_burst, empty_rounds = time_us(NONE, sms, 1), time_us(NONE, sms, ROUNDS)
    empty_alone = time_us(NONE, 1, ROUNDS)
    results = []
    print(f"{sms} CTAs of 256 threads; a launch storing nothing: {empty_burst:.2f} us "
          f"({empty_rounds:.2f} with {ROUNDS} rounds, {empty_alone:.2f} one CTA)")
    print(f"| stores | bytes a CTA | every SM once: us over the empty launch | TB/s | every SM, {ROUNDS} rounds: "
          f"us a round | TB/s | one CTA, {ROUNDS} rounds: us a round | GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for pattern, (name, size) in PATTERNS.items():
        if pattern == NONE:
            continue
        tile = ROWS * COLS * size
        burst = time_us(pattern, sms, 1) - empty_burst
        sustained = (time_us(pattern, sms, ROUNDS) - empty_rounds) / ROUNDS
        alone = (time_us(pattern, 1, ROUNDS) - empty_alone) / ROUNDS
        results.append(dict(pattern=pattern, stores=name, tile_bytes=tile, ctas=sms, burst_us=burst,
                            sustained_us=sustained, alone_us=alone))
        print(f"| {name} | {tile // 1024} KB | {burst:.2f} | {sms * tile / burst / 1e6:.2f} | {sustained:.2f} | "
              f"{sms * tile / sustained / 1e6:.2f} | {alone:.2f} | {tile / alone / 1e3:.0f} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "store-rates.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
