"""MLA decode with DeepSeek-like shapes, on the GPU when CuPy sees one, else on the CPU.

Prints the KV-cache memory of MHA versus MLA, the strategy ``auto`` picks,
the error against the float64 reference and the time of one call.

    python examples/mla_decode.py [--batch 2] [--seq-len 1024] [--heads 16] [--q-len 1] [--cpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cumla
from cumla import reference
from cumla.testing import TOLERANCE, relative_error, to_numpy

L, R, DN, DV, BLOCK = 512, 64, 128, 128, 64


def gpu_module(force_cpu: bool):
    if force_cpu:
        return None
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # no CuPy or no usable device: run on the CPU
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--q-len", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    args = parser.parse_args(argv)
    cp = gpu_module(args.cpu)
    xp = cp if cp is not None else np
    dtype = cumla.bfloat16 if cp is not None else np.dtype(np.float32)
    dtype_name = "bfloat16" if cp is not None else "float32"
    B, S, H, Sq = args.batch, args.seq_len, args.heads, args.q_len

    print(cumla.memory_report(heads=H, head_dim=DN, latent=L, rope=R, seq_len=S, batch=B, layers=61).table())
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, Sq, H, DN + R), dtype=np.float32)
    blocks = B * -(-S // BLOCK)
    cache = rng.standard_normal((blocks, BLOCK, L + R), dtype=np.float32)
    table = rng.permutation(blocks).astype(np.int32).reshape(B, -1)
    seqlens = rng.integers(S // 2, S + 1, size=B).astype(np.int32)
    w_kv = rng.standard_normal((L, H * (DN + DV)), dtype=np.float32) / np.float32(np.sqrt(L))
    host = dict(q=q.astype(dtype), cache=cache.astype(dtype), w_kv=w_kv.astype(dtype))
    dev = {k: xp.asarray(v) for k, v in host.items()}
    index = dict(seqlens=xp.asarray(seqlens), block_table=xp.asarray(table))

    choice = cumla.cost(batch=B, seq_len=S, heads=H, q_len=Sq).best
    print(f"\ndevice: {'GPU (CuPy)' if cp is not None else 'CPU (NumPy)'}, dtype {dtype_name}")
    print(f"strategy='auto' picks: {choice}  (B={B}, Sq={Sq}, H={H}, S<={S}, L={L}, R={R})")
    o = cumla.decode(**dev, **index, rope_dim=R)  # warm-up (compiles kernels on the GPU)
    if cp is not None:
        cp.cuda.runtime.deviceSynchronize()
    start = time.perf_counter()
    o = cumla.decode(**dev, **index, rope_dim=R)
    if cp is not None:
        cp.cuda.runtime.deviceSynchronize()
    elapsed = time.perf_counter() - start
    ref, _ = reference.decode(**host, seqlens=seqlens, block_table=table, rope_dim=R)
    err = relative_error(to_numpy(o), ref)
    tol = TOLERANCE[dtype_name]
    print(f"relative error vs float64 reference: {err:.2e} (tolerance {tol:.0e}) -> {'OK' if err <= tol else 'FAIL'}")
    print(f"time of one decode call: {elapsed * 1e3:.2f} ms, output {tuple(o.shape)}")
    return 0 if err <= tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
