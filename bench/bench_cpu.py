"""CPU benchmark: cumla.decode on NumPy against naive decompress-then-attend NumPy code.

DeepSeek dims (L=512, R=64, Dn=Dv=128), H=16, B=2, S=4096, float32.

    python bench/bench_cpu.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import cumla

L, R, DN, DV = 512, 64, 128, 128


def naive_decode(q, cache, w_kv, scale):
    """What one writes without MLA tricks: decompress every K and V, then attend."""
    batch, heads = q.shape[0], q.shape[1]
    c, r = cache[..., :L], cache[..., L:]
    w = w_kv.reshape(L, heads, DN + DV)
    k_nope = np.einsum("bsl,lhd->bhsd", c, w[:, :, :DN], optimize=True)
    v = np.einsum("bsl,lhd->bhsd", c, w[:, :, DN:], optimize=True)
    k = np.concatenate([k_nope, np.broadcast_to(r[:, None], (batch, heads) + r.shape[1:])], axis=-1)
    s = np.einsum("bhd,bhsd->bhs", q, k, optimize=True) * scale
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhs,bhsd->bhd", p, v, optimize=True)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    B, H, S = args.batch, args.heads, args.seq_len
    q = rng.standard_normal((B, H, DN + R), dtype=np.float32)
    cache = rng.standard_normal((B, S, L + R), dtype=np.float32)
    w_kv = rng.standard_normal((L, H * (DN + DV)), dtype=np.float32) / np.float32(np.sqrt(L))
    scale = 1 / np.sqrt(DN + R)
    ours = best_of(lambda: cumla.decode(q, cache, w_kv, rope_dim=R), args.repeat)
    naive = best_of(lambda: naive_decode(q, cache, w_kv, scale), args.repeat)
    err = np.abs(cumla.decode(q, cache, w_kv, rope_dim=R) - naive_decode(q, cache, w_kv, scale)).max()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, NumPy {np.__version__}")
    print(f"B={B} H={H} S={S} L={L} R={R} Dn={DN} Dv={DV} float32 (best of {args.repeat})")
    print(f"  cumla.decode (auto -> {cumla.cost(batch=B, seq_len=S, heads=H, itemsize=4).best}): {ours * 1e3:8.1f} ms")
    print(f"  naive decompress-then-attend        : {naive * 1e3:8.1f} ms")
    print(f"  speed-up: {naive / ours:.1f}x   max |difference|: {err:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
