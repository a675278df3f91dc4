"""A generation-like loop: encode each new token into a paged latent cache, then decode.

Random weights, a batch of sequences with different prompt lengths, a few
hundred steps; GPU when CuPy sees one, else CPU. Prints the cache memory,
tokens per second and a progress bar.

    python examples/serve_loop.py [--steps 200] [--batch 4] [--heads 16] [--fp8] [--cpu]

--fp8 keeps the cache as FP8 rows (FlashMLA's 656-byte layout, quantised by
`append`, dequantised inside the decode kernel on the GPU).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import cumla

HIDDEN, L, R, DN, DV, BLOCK = 1024, 512, 64, 128, 128, 64


def pick_module(force_cpu: bool):
    if not force_cpu:
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy
        except Exception:  # no CuPy or no usable device: run on the CPU
            pass
    return np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=300)
    parser.add_argument("--fp8", action="store_true", help="FP8 cache rows (e4m3 + float32 scales + bf16 RoPE)")
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    xp = pick_module(args.cpu)
    dtype = cumla.bfloat16 if xp is not np else np.dtype(np.float32)
    rng = np.random.default_rng(0)
    H, B = args.heads, args.batch

    def device(a):
        return xp.asarray(a.astype(dtype))

    w_dkv = device(rng.standard_normal((HIDDEN, L + R), dtype=np.float32) / np.sqrt(HIDDEN))
    w_kv = device(rng.standard_normal((L, H * (DN + DV)), dtype=np.float32) / np.sqrt(L))
    layer = cumla.LatentAttention(w_dkv, w_kv, heads=H, rope_dim=R, v_dim=DV)
    prompts = rng.integers(1, args.max_prompt + 1, size=B)
    longest = int(prompts.max()) + args.steps
    blocks_per_seq = -(-longest // BLOCK)
    cache = cumla.PagedLatentCache(B * blocks_per_seq, BLOCK, latent_dim=L, rope_dim=R, max_seqs=B,
                                   max_blocks_per_seq=blocks_per_seq, dtype=dtype, xp=xp,
                                   fp8=cumla.fp8_format(L, R, 128) if args.fp8 else None)
    seqs = [cache.add_sequence() for _ in range(B)]
    for s, n in zip(seqs, prompts):  # prefill: encode the prompt tokens
        rows = layer.encode(device(rng.standard_normal((int(n), HIDDEN), dtype=np.float32)), xp.arange(int(n)))
        cache.append([s] * int(n), rows[:, :L], rows[:, L:])
    pool_bytes = cache.pool.nbytes
    print(f"{'GPU (CuPy)' if xp is not np else 'CPU (NumPy)'}: {B} sequences, prompts {prompts.tolist()}, "
          f"H={H}, {cumla.memory_report(heads=H, head_dim=DN, latent=L, rope=R, seq_len=longest, batch=B, layers=1).ratio:.1f}x "
          f"smaller than an MHA cache")
    print(f"latent cache pool: {pool_bytes / 2**20:.1f} MiB ({cache.pool.shape[0]} blocks of {BLOCK} tokens"
          f"{', FP8 rows' if args.fp8 else ''})")

    start = time.perf_counter()
    checksum = 0.0
    for step in range(args.steps):
        positions = np.array([cache.length(s) for s in seqs])
        x = device(rng.standard_normal((B, HIDDEN), dtype=np.float32))
        rows = layer.encode(x, xp.asarray(positions))
        cache.append(seqs, rows[:, :L], rows[:, L:])
        q = layer.rotate_queries(device(rng.standard_normal((B, H, DN + R), dtype=np.float32)), xp.asarray(positions))
        o = layer.decode(q, cache, seq_ids=seqs)
        checksum += float(o[0, 0, 0]) if step % 50 == 0 else 0.0
        if step % max(1, args.steps // 40) == 0 or step == args.steps - 1:
            done = (step + 1) / args.steps
            bar = "#" * int(30 * done)
            sys.stdout.write(f"\r[{bar:<30}] {step + 1}/{args.steps} steps")
            sys.stdout.flush()
    if xp is not np:
        xp.cuda.runtime.deviceSynchronize()
    elapsed = time.perf_counter() - start
    print(f"\n{args.steps * B} tokens in {elapsed:.2f} s: {args.steps * B / elapsed:.1f} tokens/s "
          f"(final lengths {[cache.length(s) for s in seqs]}, checksum {checksum:.4f})")
    assert np.isfinite(checksum)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
