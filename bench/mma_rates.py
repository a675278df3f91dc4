"""Cycles per warpgroup MMA of the Hopper kernel's shapes, alone and in pairs.

The Hopper kernel's time is set by how its two warpgroups share the tensor
cores and the shared-memory bandwidth; bench/seesaw_model.py takes its MMA
durations from this: a score MMA (64 x 64 x 16, both operands in shared
memory) and a P V MMA (64 x 256 x 16, P from registers or shared memory),
each alone, what two warpgroups issuing at once get, and what bulk copies
into shared memory (the path of the kernel's TMA refills, from L2 here) do
to them, one CTA per SM. On the H200 (2026-11-30): 32.1 cycles per score
MMA, 185.4 per P V from registers (69% of the peak), 128.1 from shared
memory; paired, the tensor pipe alternates the warpgroups' instructions.
With P from registers only a stream of one accumulator of N <= 128 runs at
the peak (64.1 cycles at N = 128); two N = 128 accumulators in the stream,
alternating or four MMAs each in turn, take 113.2 cycles each (57%):

    python bench/mma_rates.py [--out DIR]      # on a Hopper GPU; prints a table

A second table gives the rate of mma.sync m16n8k16 (the portable kernel's
MMA) per scheduler, with 1 or 2 warps per scheduler and 0, 2 or 3
ldmatrix.x4 per 4 MMAs (the portable kernel's P V and score loops): what
the portable kernel's 64-row tiles can reach on this GPU.

Dense bf16 peak: 4096 FLOP per cycle and SM (989 TFLOP/s at 1.83 GHz).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cumla import _kernels

SOURCE = Path(__file__).resolve().parent / "mma_rates.cu"
PEAK_FLOP_PER_CYCLE = 4096
SMEM_BYTES = 2 * 64 * 1024 + 1024 + 32  # two regions, alignment, four copy barriers
REPS = 400
BATCH = 16  # mma_rates.cu's kBatch
COPY_BYTES = 16 * 1024  # mma_rates.cu's kCopyBytes
COPIES = 3  # the OP that copies instead of multiplying
OPS = {0: "scores (A, B K-major in smem)", 1: "P V (A in registers)", 2: "P V (A in smem)",
       COPIES: "bulk copies global -> smem", 4: "P V (A in registers, two accumulator chains)",
       5: "P V (A in registers, accumulator switched every 4 MMAs)"}

# (name, warpgroup 0's (N, OP), warpgroup 1's or None)
CASES = [
    ("scores N=64", (64, 0), None),
    ("scores N=128", (128, 0), None),
    ("scores N=256", (256, 0), None),
    ("P V from registers N=256", (256, 1), None),
    ("P V from smem N=256", (256, 2), None),
    ("P V from registers N=128", (128, 1), None),
    ("P V from registers, N=256 as two N=128 chains", (128, 4), None),
    ("P V from registers, N=256 as two N=128 chains in turn", (128, 5), None),
    ("scores N=64 + scores N=64", (64, 0), (64, 0)),
    ("scores N=64 + P V from registers", (64, 0), (256, 1)),
    ("scores N=64 + P V from smem", (64, 0), (256, 2)),
    ("scores N=64 + P V from registers, two N=128 chains", (64, 0), (128, 4)),
    ("scores N=64 + P V from registers N=128", (64, 0), (128, 1)),
    ("scores N=64 + P V from registers, two N=128 chains in turn", (64, 0), (128, 5)),
    ("scores N=128 + P V from registers", (128, 0), (256, 1)),
    ("P V from registers + P V from registers", (256, 1), (256, 1)),
    ("copies", (0, COPIES), None),
    ("scores N=64 + copies", (64, 0), (0, COPIES)),
    ("P V from registers + copies", (256, 1), (0, COPIES)),
]


# (warps per scheduler, ldmatrix.x4 per 4 MMAs) of the mma.sync rate kernel
SYNC_CASES = [(1, 0), (2, 0), (2, 2), (2, 3)]
SYNC_SMEM = 32 * 512  # mma_rates.cu's kSyncRateSmem
SYNC_MMA_FLOP = 2 * 16 * 8 * 16


def kernel_name(first: tuple[int, int], second: tuple[int, int] | None) -> str:
    n1, op1 = second or first
    return f"mma_rates<{first[0]}, {first[1]}, {n1}, {op1}>"


def sync_kernel_name(warps_per_smsp: int, ldsm: int) -> str:
    return f"mma_sync_rate<{warps_per_smsp}, {ldsm}>"


def kernel_names() -> tuple[str, ...]:
    """Every kernel the cases launch, once each."""
    return tuple(dict.fromkeys(kernel_name(a, b) for _, a, b in CASES)) + tuple(
        sync_kernel_name(*case) for case in SYNC_CASES)


def launch_warm(kernel, sms: int, threads: int, args: tuple, smem: int) -> None:
    """One CTA per SM, twice (the first launch warms the clocks up), then wait;
    the kernel writes its clock counts into one of ``args``."""
    import cupy as cp

    kernel.max_dynamic_shared_size_bytes = smem
    for _ in range(2):
        kernel((sms,), (threads,), args, shared_mem=smem)
    cp.cuda.Device().synchronize()


def sync_rates(module, sms: int) -> list[dict]:
    """The mma.sync table: cycles per MMA and scheduler, and FLOP per cycle and SM."""
    import cupy as cp

    rows = []
    print("| warps per scheduler | ldmatrix.x4 per 4 MMAs | cycles per MMA and scheduler | FLOP/cycle/SM | % of dense peak |")
    print("|---|---|---|---|---|")
    for warps, ldsm in SYNC_CASES:
        threads = 128 * warps
        cycles = cp.zeros(sms * threads // 32, dtype=cp.int64)
        sink = cp.zeros(256, dtype=cp.float32)
        launch_warm(module.get_function(sync_kernel_name(warps, ldsm)), sms, threads,
                    (cycles, sink, np.int32(REPS)), SYNC_SMEM)
        per_mma = float(np.median(cycles.get())) / (REPS * 16 * warps)
        flop = 4 * SYNC_MMA_FLOP / per_mma
        rows.append({"warps_per_scheduler": warps, "ldmatrix_per_4_mma": ldsm, "cycles_per_mma": per_mma,
                     "flop_per_cycle": flop})
        print(f"| {warps} | {ldsm} | {per_mma:.1f} | {flop:.0f} | {100 * flop / PEAK_FLOP_PER_CYCLE:.0f}% |")
    return rows


def source() -> str:
    """hopper.cuh (with common.cuh) inlined, then the benchmark kernels."""
    return _kernels.source("hopper.cuh") + "\n" + SOURCE.read_text()


def smem_bytes_per_op(n: int, op: int) -> int:
    """Shared-memory bytes one MMA reads, or one copy writes."""
    if op == COPIES:
        return COPY_BYTES
    a = 0 if op in (1, 4, 5) else 64 * 16 * 2
    return a + n * 16 * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for mma-rates.json")
    args = parser.parse_args()
    import cupy as cp

    module = cp.RawModule(code=source(), options=_kernels.options("sm_90a"), name_expressions=kernel_names())
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    cycles = cp.zeros(2 * sms, dtype=cp.int64)
    sink = cp.zeros(256, dtype=cp.float32)
    src = cp.zeros(COPY_BYTES // 4, dtype=cp.float32)
    rows = []
    print("| case | warpgroup | cycles per MMA (or copy) | FLOP/cycle/SM (both) | % of dense peak | smem B/cycle (both) |")
    print("|---|---|---|---|---|---|")
    for name, first, second in CASES:
        launch_warm(module.get_function(kernel_name(first, second)), sms, 256 if second else 128,
                    (cycles, sink, src, np.int32(REPS)), SMEM_BYTES)
        per_wg = cycles.get().reshape(sms, 2)
        ops = [first] + ([second] if second else [])
        flop = smem = 0.0
        result = {"case": name, "warpgroups": []}
        for wg, (n, op) in enumerate(ops):
            per_op = float(np.median(per_wg[:, wg])) / (REPS * (1 if op == COPIES else BATCH))
            flop += 0 if op == COPIES else 2 * 64 * n * 16 / per_op
            smem += smem_bytes_per_op(n, op) / per_op
            result["warpgroups"].append({"n": n, "op": OPS[op], "cycles_per_op": per_op})
        result.update(flop_per_cycle=flop, smem_bytes_per_cycle=smem)
        rows.append(result)
        for wg, entry in enumerate(result["warpgroups"]):
            both = f"{flop:.0f} | {100 * flop / PEAK_FLOP_PER_CYCLE:.0f}% | {smem:.0f}" if wg == 0 else " | | "
            shape = "" if entry["op"] == OPS[COPIES] else f", N={entry['n']}"
            print(f"| {name if wg == 0 else ''} | {wg}: {entry['op']}{shape} | {entry['cycles_per_op']:.1f} | {both} |")
    sync = sync_rates(module, sms)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "mma-rates.json").write_text(json.dumps({"warpgroup": rows, "mma_sync": sync}, indent=1))


if __name__ == "__main__":
    main()
