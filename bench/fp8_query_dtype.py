"""The FP8 core at a config with bfloat16 and with float16 queries over the
same FP8 rows (FlashMLA's layout), GPU time per call from graph replays.

The kernels that read FP8 rows for M <= 16 run the latent products in f16
and the RoPE products in the query dtype: with bfloat16 queries a tile's
MMAs switch type twice, with float16 never. A gap between the two rows
beyond the float16 path's extra RoPE rounding is the switch's cost.

    python bench/fp8_query_dtype.py [--configs C] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cupy as cp
import numpy as np

import cumla
from bench_gpu import BLOCK, CONFIGS, L, R, fp8_pool, make_config, time_core
from cumla import _gpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="C")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    args = parser.parse_args()
    fmt = cumla.fp8_format(L, R, 128)
    rng = np.random.default_rng(0)
    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        heads, q_len = cfg["heads"], cfg["q_len"]
        q, cache, table, seqlens = make_config(cfg["batch"], q_len, heads, cfg["seq"], rng)
        pool = fp8_pool(cache, fmt)
        del cache
        cp.get_default_memory_pool().free_all_blocks()
        for dtype in (cumla.bfloat16, np.dtype(np.float16)):
            queries = q.astype(dtype)
            spec = _gpu.fp8_kernel(dtype, fmt, L, q_len * heads, BLOCK)
            us = time_core(queries, pool, table, seqlens, heads, q_len, fmt)
            rows.append(dict(config=name, dtype=str(np.dtype(dtype)), kernel=spec.name, fp8_us=us))
            print(f"| {name} | {np.dtype(dtype)} | {spec.name} | {us:.1f} |", flush=True)
        del q, pool, table
        cp.get_default_memory_pool().free_all_blocks()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "fp8-query-dtype.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
