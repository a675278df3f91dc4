"""Run one benchmark configuration's core a few times (for ncu / compute-sanitizer).

    ncu --clock-control none -k regex:latent_attention -c 1 python bench/profile_one.py C
"""
import sys

import numpy as np

import cupy as cp
import cumla
from bench_gpu import CONFIGS, DN, L, R, make_config


def main(name: str) -> None:
    cfg = CONFIGS[name]
    q, cache, table, seqlens = make_config(cfg["batch"], cfg["q_len"], cfg["heads"], cfg["seq"],
                                           np.random.default_rng(0))
    plan = cumla.plan(seqlens, heads=cfg["heads"], q_len=cfg["q_len"], v_dim=L)
    out = cp.empty(q.shape[:-1] + (L,), dtype=q.dtype)
    for _ in range(3):
        cumla.latent_attention(q, cache, v_dim=L, scale=1 / np.sqrt(DN + R), seqlens=seqlens,
                               block_table=table, plan=plan, out=out, check=False)
    cp.cuda.runtime.deviceSynchronize()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "C")
