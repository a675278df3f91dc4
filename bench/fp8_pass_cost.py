"""Where the time of the dequantise-first FP8 path goes (layouts no kernel reads).

At a fixed configuration's shape, over FP8 pools of one scale per token and
of FlashMLA's 128-value groups: the dequantising pass alone (its bytes read
and written per second), the bf16 core alone on the pass's output, and the
eager call a user makes with the pool (one scale per token: pass, index
arrays and bf16 core; 128-value groups: the FP8 kernel, no pass). Then the
user's call over one-scale rows for the serving benchmark's batches (B=64,
H=16, the same total tokens; their tables are padded to the longest
request), where a pass over every block the table names would pay for the
padding.

    python bench/fp8_pass_cost.py [--config C] [--sections config,batches] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import cupy as cp
import cumla
from bench_gpu import BLOCK, CONFIGS, L, R, fp8_pool, host_us, make_config, paged_inputs, serving_batches, time_us
from cumla import _gpu
from cumla._arrays import BFLOAT16


def measure(name: str) -> list[dict]:
    cfg = CONFIGS[name]
    batch, q_len, heads, seq = cfg["batch"], cfg["q_len"], cfg["heads"], cfg["seq"]
    q, cache, table, seqlens = make_config(batch, q_len, heads, seq, np.random.default_rng(0))
    plan = cumla.plan(seqlens, heads=heads, q_len=q_len, v_dim=L)
    out = cp.empty(q.shape[:-1] + (L,), dtype=BFLOAT16)
    rows = []
    for group in (L, 128):
        fmt = cumla.fp8_format(L, R, group)
        pool = fp8_pool(cache, fmt)
        picked = cp.ascontiguousarray(table.ravel())
        pass_us = time_us(lambda: _gpu._dequantize_rows(fmt, pool, picked, BLOCK, BFLOAT16), warmup=2, repeat=10)
        dense = _gpu._dequantize_rows(fmt, pool, picked, BLOCK, BFLOAT16).reshape(picked.size, BLOCK, fmt.width)
        dense_table = cp.arange(picked.size, dtype=np.int32).reshape(table.shape)
        core_us = time_us(lambda: cumla.latent_attention(q, dense, v_dim=L, scale=0.1, seqlens=seqlens,
                                                         block_table=dense_table, plan=plan, out=out, check=False))
        # The call as a user makes it: one scale per token is dequantised first
        # (the pass, index arrays, the bf16 core); 128-value groups are read by
        # an FP8 kernel itself (no pass).
        call_us = time_us(lambda: cumla.latent_attention(q, pool, v_dim=L, scale=0.1, seqlens=seqlens,
                                                         block_table=table, plan=plan, out=out, check=False,
                                                         cache_format=fmt), warmup=1, repeat=5, calls=3)
        moved = picked.size * BLOCK * (fmt.row_bytes + 2 * fmt.width)
        rows.append(dict(config=name, group=group, row_bytes=fmt.row_bytes, pass_us=pass_us,
                         pass_tb_s=moved / pass_us / 1e6, core_on_pass_output_us=core_us, call_us=call_us))
        print(json.dumps(rows[-1]), flush=True)
        del pool, dense
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def measure_batches(heads: int = 16) -> list[dict]:
    """The user's call over one-scale rows for the serving batches: its time
    and its host time (this path is host-bound at these sizes)."""
    fmt = cumla.fp8_format(L, R, L)
    rows = []
    for name, lengths in serving_batches():
        q, cache, table, seqlens = paged_inputs(lengths, heads, BLOCK, np.random.default_rng(1))
        pool = fp8_pool(cache, fmt)
        del cache
        out = cp.empty(q.shape[:-1] + (L,), dtype=BFLOAT16)
        plan = cumla.plan(seqlens, heads=heads, q_len=1, v_dim=L)

        def call():
            return cumla.latent_attention(q, pool, v_dim=L, scale=0.1, seqlens=seqlens, block_table=table,
                                          plan=plan, out=out, check=False, cache_format=fmt)

        call_us = time_us(call, warmup=1, repeat=5, calls=3)
        rows.append(dict(batch=name, heads=heads, tokens=int(lengths.sum()), blocks_named=int(table.size),
                         call_us=call_us, host_us=host_us(call, calls=10)))
        print(json.dumps(rows[-1]), flush=True)
        del q, pool, table
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="C")
    parser.add_argument("--sections", default="config,batches",
                        help="comma-separated: config (the pass at --config), batches (the serving batches)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if sections - {"config", "batches"}:
        parser.error(f"unknown sections {sorted(sections - {'config', 'batches'})}")
    result = dict(config=measure(args.config) if "config" in sections else None,
                  batches=measure_batches() if "batches" in sections else None)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "fp8-pass-cost.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
