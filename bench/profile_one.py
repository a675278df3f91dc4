"""Run one benchmark shape a few times (for ncu / compute-sanitizer).

    ncu --clock-control none -k regex:latent_attention -c 1 python bench/profile_one.py C
    python bench/profile_one.py C-fp8     # the core over FlashMLA's FP8 rows
    python bench/profile_one.py A-portable  # the mma.sync kernel where the Hopper one would run
    python bench/profile_one.py prefill   # the decompressed strategy's prefill chunk
    python bench/profile_one.py random    # bench_gpu's serving batches: even, random, one10x
"""
import sys

import numpy as np

import cupy as cp
import cumla
from bench_gpu import CONFIGS, DN, L, R, fp8_pool, make_config, prefill_inputs, serving_batches
from cumla import _kernels
from split_costs import planned_call


def core_call(name: str, fp8: bool = False, batch: int | None = None, num_parts: int | None = None,
              order: str = "shuffled"):
    """One planned call of config ``name``'s core (over FP8 rows with ``fp8``; ``batch``
    requests instead of the config's; the plan's ``num_parts`` if given; the cache's
    blocks in ``order``), ready to repeat."""
    cfg = CONFIGS[name]
    q, cache, table, seqlens = make_config(batch or cfg["batch"], cfg["q_len"], cfg["heads"], cfg["seq"],
                                           np.random.default_rng(0), order)
    fmt = cumla.fp8_format(L, R, 128) if fp8 else None
    if fp8:
        cache = fp8_pool(cache, fmt)
    plan = cumla.plan(seqlens, heads=cfg["heads"], q_len=cfg["q_len"], v_dim=L, num_parts=num_parts, cache_format=fmt)
    out = cp.empty(q.shape[:-1] + (L,), dtype=q.dtype)
    return lambda: cumla.latent_attention(q, cache, v_dim=L, scale=1 / np.sqrt(DN + R), seqlens=seqlens,
                                          block_table=table, plan=plan, out=out, check=False, cache_format=fmt)


#: profile_one's names of bench_gpu's serving batches (B=64, H=128, 64 x 4096 tokens).
SERVING = dict(zip(("even", "random", "one10x"), (lengths for _, lengths in serving_batches())))


def serving_call(name: str):
    """One planned call of the serving batch ``name`` (H=128, bench_gpu's pages), ready to repeat."""
    return planned_call(SERVING[name], 128, 1, np.random.default_rng(0))[0]


def run_core(name: str, fp8: bool) -> None:
    call = serving_call(name) if name in SERVING else core_call(name, fp8)
    for _ in range(3):
        call()


def run_prefill() -> None:
    q, cache, w_kv = prefill_inputs(np.random.default_rng(0))
    for _ in range(3):
        cumla.decode(q, cache, w_kv, rope_dim=R, causal=False, strategy="decompressed", check=False)


def main(name: str) -> None:
    config, *options = name.split("-")
    unknown = set(options) - {"fp8", "portable"}
    if unknown or (config != "prefill" and config not in CONFIGS and config not in SERVING) or \
            (config in SERVING and "fp8" in options):
        raise SystemExit(f"unknown shape {name!r}: A-F, prefill or {', '.join(SERVING)}, "
                         "optionally -portable, and -fp8 for A-F")
    if "portable" in options:
        _kernels.USE_HOPPER_KERNEL = False
    if config == "prefill":
        run_prefill()
    else:
        run_core(config, "fp8" in options)
    cp.cuda.runtime.deviceSynchronize()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "C")
