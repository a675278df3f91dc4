"""Run one benchmark shape a few times (for ncu / compute-sanitizer).

    ncu --clock-control none -k regex:latent_attention -c 1 python bench/profile_one.py C
    python bench/profile_one.py C-fp8     # the core over FlashMLA's FP8 rows
    python bench/profile_one.py A-portable  # the mma.sync kernel where the Hopper one would run
    python bench/profile_one.py prefill   # the decompressed strategy's prefill chunk
"""
import sys

import numpy as np

import cupy as cp
import cumla
from bench_gpu import BFLOAT16, CONFIGS, DN, DV, L, PREFILL, R, make_config
from cumla import _kernels


def run_core(name: str, fp8: bool) -> None:
    cfg = CONFIGS[name]
    q, cache, table, seqlens = make_config(cfg["batch"], cfg["q_len"], cfg["heads"], cfg["seq"],
                                           np.random.default_rng(0))
    fmt = None
    if fp8:
        fmt = cumla.fp8_format(L, R, 128)
        pool = cp.empty(cache.shape[:2] + (fmt.row_bytes,), dtype=np.uint8)
        for start in range(0, cache.shape[0], 4096):
            pool[start:start + 4096] = fmt.quantize(cache[start:start + 4096])
        cache = pool
    plan = cumla.plan(seqlens, heads=cfg["heads"], q_len=cfg["q_len"], v_dim=L)
    out = cp.empty(q.shape[:-1] + (L,), dtype=q.dtype)
    for _ in range(3):
        cumla.latent_attention(q, cache, v_dim=L, scale=1 / np.sqrt(DN + R), seqlens=seqlens,
                               block_table=table, plan=plan, out=out, check=False, cache_format=fmt)


def run_prefill() -> None:
    rng = np.random.default_rng(0)
    batch, q_len, heads, seq = (PREFILL[k] for k in ("batch", "q_len", "heads", "seq"))
    q = cp.asarray(rng.standard_normal((batch, q_len, heads, DN + R), dtype=np.float32).astype(BFLOAT16))
    cache = cp.asarray(rng.standard_normal((batch, seq, L + R), dtype=np.float32).astype(BFLOAT16))
    w_kv = cp.asarray((rng.standard_normal((L, heads * (DN + DV)), dtype=np.float32) / np.sqrt(L)).astype(BFLOAT16))
    for _ in range(3):
        cumla.decode(q, cache, w_kv, rope_dim=R, causal=False, strategy="decompressed", check=False)


def main(name: str) -> None:
    config, *options = name.split("-")
    unknown = set(options) - {"fp8", "portable"}
    if unknown or (config != "prefill" and config not in CONFIGS):
        raise SystemExit(f"unknown shape {name!r}: A-F or prefill, optionally -fp8 and -portable")
    if "portable" in options:
        _kernels.USE_HOPPER_KERNEL = False
    if config == "prefill":
        run_prefill()
    else:
        run_core(config, "fp8" in options)
    cp.cuda.runtime.deviceSynchronize()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "C")
