"""GPU benchmark: DESIGN's fixed configurations A-F on the latent-attention core.

For each configuration: median time of event-timed runs after warm-up, TB/s,
TFLOP/s and % of the roofline, where the roofline uses the copy bandwidth and
bf16 matmul rate measured in the same run (sustained: after seconds of back-to-back
matmuls, once the card sits at its power cap). Also times the CuPy-only baseline
(absorbed form, cupy.matmul + softmax) and the full ``decode`` with absorption.

    python bench/bench_gpu.py --out bench/results          # JSON + markdown
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

import cupy as cp
import cumla
from cumla import _gpu, _kernels
from cumla._arrays import BFLOAT16
from cumla.testing import capture_graph

L, R, DN, DV, BLOCK = 512, 64, 128, 128, 64
D = L + R
CONFIGS = {
    "A": dict(batch=64, q_len=1, heads=128, seq=4096),
    "B": dict(batch=128, q_len=1, heads=128, seq=8192),
    "C": dict(batch=128, q_len=1, heads=16, seq=8192),
    "D": dict(batch=4, q_len=1, heads=128, seq=32768),
    "E": dict(batch=64, q_len=2, heads=128, seq=4096),
    "F": dict(batch=132, q_len=1, heads=64, seq=16384),
}


def time_us(fn, warmup: int = 3, repeat: int = 20, calls: int = 1) -> float:
    """Median of event-timed runs of ``calls`` back-to-back calls, per call, in
    microseconds. With several calls the GPU queue stays ahead of the host
    whenever a call's GPU time exceeds its enqueue time, so only the first
    call's launch latency is in the measurement, spread over ``calls``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1e3 / calls)
    return float(np.median(times))


def host_us(fn, calls: int = 20) -> float:
    """Host time to enqueue one call (Python, validation, launches), back to back
    without waiting for the GPU: the floor of an eager call's time."""
    fn()
    cp.cuda.Stream.null.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    cp.cuda.Stream.null.synchronize()
    return elapsed / calls * 1e6


def replay_us(graph, stream, calls: int) -> float:
    """GPU time per call of one event-timed replay of a graph of ``calls`` calls."""
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record(stream)
    graph.launch(stream)
    stop.record(stream)
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) * 1e3 / calls


def graph_time_us(fn, calls: int = 10, repeat: int = 10) -> float:
    """Median GPU time per call of ``fn`` captured ``calls`` times back to back in
    one CUDA graph: no host launch cost inside the measurement (what an engine
    replaying graphs gets). ``fn`` must be capturable (a planned call, check=False)."""
    graph, stream = capture_graph(fn, calls)  # after a warm-up call outside the capture
    graph.launch(stream)
    return float(np.median([replay_us(graph, stream, calls) for _ in range(repeat)]))


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 4 GiB device-to-device copy."""
    n = 2**31
    src = cp.random.random(n // 4, dtype=np.float32).view(np.uint8)
    dst = cp.empty_like(src)
    us = time_us(lambda: cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, n, 3, 0))
    del src, dst
    return 2 * n / (us * 1e-6)


#: Seconds of back-to-back matmuls before the sustained rate is timed: long
#: enough for the card to settle at its power cap (short bursts run faster).
SUSTAIN_S = 3.0


def clocks_under(run, calls: int = 200) -> dict | None:
    """The SM clock (MHz) and power draw (W) nvidia-smi reports while ``calls``
    calls of ``run`` keep the GPU busy (None where nvidia-smi cannot tell)."""
    for _ in range(calls):
        run()
    try:
        query = subprocess.run(["nvidia-smi", "-i", cp.cuda.Device().pci_bus_id, "--format=csv,noheader,nounits",
                                "--query-gpu=clocks.sm,power.draw"], capture_output=True, text=True, timeout=10)
        clock, power = (float(x) for x in query.stdout.strip().split(","))
        return dict(sm_clock_mhz=clock, power_w=power)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    finally:
        cp.cuda.Device().synchronize()


def matmul_rates() -> tuple[float, float, str, dict | None]:
    """bf16 8192^3 matmul FLOP/s on random data (CuPy; torch if CuPy cannot):
    sustained (timed after SUSTAIN_S seconds of back-to-back matmuls, the rate
    the card holds at its power cap: the roofline's) and burst (timed right
    after a 3-call warm-up), the library that ran them, and the SM clock and
    power under the sustained load (:func:`clocks_under`)."""
    n = 8192
    try:
        a = cp.random.standard_normal((n, n), dtype=np.float32).astype(BFLOAT16)
        b = cp.random.standard_normal((n, n), dtype=np.float32).astype(BFLOAT16)
        run, via = (lambda: cp.matmul(a, b)), "cupy"
        run()
    except Exception:
        import torch

        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        run, via = (lambda: a @ b), "torch"
    flop = 2 * n**3
    burst = flop / (time_us(run, warmup=3, repeat=10) * 1e-6)
    start = time.perf_counter()
    while time.perf_counter() - start < SUSTAIN_S:
        for _ in range(20):
            run()
        cp.cuda.Device().synchronize()
    sustained = flop / (time_us(run, warmup=0, repeat=10, calls=10) * 1e-6)
    return sustained, burst, via, clocks_under(run)


#: Block orders of the benchmarks' paged caches: a request's pages scattered
#: over the pool (a serving cache's pages after some churn; the default), or
#: request after request in pool order (a freshly filled pool).
TABLE_ORDERS = ("shuffled", "sequential")


def paged_inputs(lengths, heads, block, rng, q_len=1, order="shuffled"):
    """bf16 queries and a paged cache holding the given lengths, its blocks in ``order``."""
    lengths = np.asarray(lengths, np.int32)
    per = -(-int(lengths.max()) // block)
    blocks = len(lengths) * per
    cache = cp.asarray(rng.standard_normal((blocks, block, D), dtype=np.float32).astype(BFLOAT16))
    ids = rng.permutation(blocks) if order == "shuffled" else np.arange(blocks)
    table = cp.asarray(ids.astype(np.int32).reshape(len(lengths), per))
    q = cp.asarray(rng.standard_normal((len(lengths), q_len, heads, D), dtype=np.float32).astype(BFLOAT16))
    return q, cache, table, cp.asarray(lengths)


def make_config(batch, q_len, heads, seq, rng, order="shuffled"):
    """A fixed configuration's inputs: every request full, page BLOCK, blocks in ``order``."""
    return paged_inputs(np.full(batch, seq, np.int32), heads, BLOCK, rng, q_len, order)


def cupy_baseline(q, cache, table, scale):
    """What a user would write with CuPy alone (absorbed form, gather, matmul, softmax).

    CuPy's batched matmul has no bfloat16 path, so this runs in float16 (the
    same bytes per element); the casts are part of what such a user pays.
    """
    batch, q_len, heads, _ = q.shape
    kv = cache[table].reshape(batch, -1, D).astype(np.float16)  # (B, S, D)
    rows = q.reshape(batch, q_len * heads, D).astype(np.float16)
    s = cp.matmul(rows, kv.transpose(0, 2, 1)).astype(np.float32) * scale
    s -= s.max(axis=-1, keepdims=True)
    p = cp.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return cp.matmul(p.astype(np.float16), kv[..., :L])


def bench_config(name, cfg, copy_bw, mm_rate, rng, with_baseline=True, with_decode=True, order="shuffled"):
    batch, q_len, heads, seq = cfg["batch"], cfg["q_len"], cfg["heads"], cfg["seq"]
    q, cache, table, seqlens = make_config(batch, q_len, heads, seq, rng, order)
    scale = 1 / np.sqrt(DN + R)
    plan = cumla.plan(seqlens, heads=heads, q_len=q_len, v_dim=L)
    out = cp.empty((batch, q_len, heads, L), dtype=BFLOAT16)

    def core():
        cumla.latent_attention(q, cache, v_dim=L, scale=scale, seqlens=seqlens, block_table=table,
                               plan=plan, out=out, check=False)

    arch = _gpu._arch_of(cp.cuda.Device().id)
    kernel = _kernels.latent_kernel(BFLOAT16, D, L, q_len * heads, arch).name
    us, eager_us, enqueue_us = graph_time_us(core), time_us(core), host_us(core)
    portable_us = None
    if kernel != _kernels.latent_kernel(BFLOAT16, D, L, q_len * heads, "sm_80").name:
        _kernels.USE_HOPPER_KERNEL = False  # the portable kernel on the same GPU, for comparison
        try:
            portable_us = graph_time_us(core)
        finally:
            _kernels.USE_HOPPER_KERNEL = True
    flops = batch * q_len * heads * seq * 2 * (D + L)
    moved = batch * seq * D * 2 + q.nbytes + out.nbytes
    roof_us = max(moved / copy_bw, flops / mm_rate) * 1e6
    row = dict(config=name, **cfg, kernel=kernel, portable_us=portable_us, time_us=us, eager_us=eager_us, host_us=enqueue_us, tb_s=moved / us / 1e6, tflop_s=flops / us / 1e6,
               roofline_us=roof_us, pct_roofline=100 * roof_us / us, bytes=moved, flops=flops)
    if with_baseline:
        try:
            row["cupy_baseline_us"] = time_us(lambda: cupy_baseline(q, cache, table, scale), 1, 5)
        except cp.cuda.memory.OutOfMemoryError:
            row["cupy_baseline_us"] = None
        cp.get_default_memory_pool().free_all_blocks()
    if not with_decode:
        del q, cache, table, out
        cp.get_default_memory_pool().free_all_blocks()
        return row
    # Full decode (absorb + core + un-absorb) at the same shapes.
    qd = cp.asarray(rng.standard_normal((batch, q_len, heads, DN + R), dtype=np.float32).astype(BFLOAT16))
    w_kv = cp.asarray((rng.standard_normal((L, heads * (DN + DV)), dtype=np.float32) / np.sqrt(L)).astype(BFLOAT16))
    row["decode_us"] = time_us(lambda: cumla.decode(qd, cache, w_kv, rope_dim=R, seqlens=seqlens,
                                                     block_table=table, plan=plan, check=False,
                                                     strategy="absorbed"))
    del q, cache, table, out
    cp.get_default_memory_pool().free_all_blocks()
    return row


def time_core(q, cache, table, seqlens, heads, q_len=1, cache_format=None) -> float:
    """GPU time per call of the planned latent-attention core on given inputs."""
    plan = cumla.plan(seqlens, heads=heads, q_len=q_len, v_dim=L, cache_format=cache_format)
    out = cp.empty(q.shape[:-1] + (L,), dtype=q.dtype)
    return graph_time_us(lambda: cumla.latent_attention(q, cache, v_dim=L, scale=0.1, seqlens=seqlens, block_table=table,
                                                        plan=plan, out=out, check=False, cache_format=cache_format))


SERVING_SEED = 0  # the uneven batch's own draw (longest request 8012 tokens at B=64, S=4096)


def serving_batches(batch: int = 64, seq: int = 4096) -> list[tuple[str, np.ndarray]]:
    """(name, lengths) of an even batch and two uneven ones of the same total
    tokens: lengths drawn from 1..2S (rescaled to the total) by a generator
    of their own, so every tool and every set of configs times the same
    batch, and one request 10x longer than the others."""
    total = batch * seq
    drawn = np.random.default_rng(SERVING_SEED).integers(1, 2 * seq + 1, batch).astype(np.float64)
    random_lengths = np.maximum(1, np.round(drawn * total / drawn.sum())).astype(np.int32)
    short = total // (batch - 1 + 10)
    one_long = np.array([short] * (batch - 1) + [total - short * (batch - 1)], np.int32)
    return [("even", np.full(batch, seq, np.int32)), ("random 1..2S", random_lengths), ("one 10x longer", one_long)]


def bench_serving(copy_bw, rng):
    """Uneven batches against an even one of the same total tokens (B=64, H=128,
    64 x 4096 tokens); tensor-parallel head slices and page sizes at B=128, S=8192."""
    uneven = {}
    for name, lengths in serving_batches():
        q, cache, table, seqlens = paged_inputs(lengths, 128, BLOCK, rng)
        uneven[name] = dict(tokens=int(lengths.sum()), longest=int(lengths.max()),
                            time_us=time_core(q, cache, table, seqlens, 128))
        del q, cache, table
        cp.get_default_memory_pool().free_all_blocks()
    for row in uneven.values():
        row["vs_even"] = row["time_us"] / uneven["even"]["time_us"]
    heads_rows = []
    for heads in (8, 16, 32, 64):
        q, cache, table, seqlens = paged_inputs(np.full(128, 8192, np.int32), heads, BLOCK, rng)
        us = time_core(q, cache, table, seqlens, heads)
        moved = cache.nbytes + q.nbytes + q.nbytes * L // D
        heads_rows.append(dict(heads=heads, time_us=us, pct_roofline=100 * moved / copy_bw / (us * 1e-6)))
        del q, cache, table
        cp.get_default_memory_pool().free_all_blocks()
    page_rows = []
    for block in (1, 16, 64, 256):
        q, cache, table, seqlens = paged_inputs(np.full(128, 8192, np.int32), 16, block, rng)
        arch = _gpu._arch_of(cp.cuda.Device().id)
        kernel = _kernels.latent_kernel(BFLOAT16, D, L, 16, arch, block).name
        page_rows.append(dict(block=block, kernel=kernel, time_us=time_core(q, cache, table, seqlens, 16)))
        del q, cache, table
        cp.get_default_memory_pool().free_all_blocks()
    return dict(uneven=uneven, heads=heads_rows, pages=page_rows)


EXTRAS = "fp8,decompressed,serving"  # the sections beyond configs A-F
FP8_CONFIGS = "CF"  # the FP8 targets: at most 0.6x the bf16 time


def fp8_pool(cache, fmt):
    """The paged bf16 cache quantised into FP8 rows of layout ``fmt`` (uint8
    pool of the same blocks), in slices: the encoder's temporaries are large."""
    pool = cp.empty(cache.shape[:2] + (fmt.row_bytes,), dtype=np.uint8)
    for start in range(0, cache.shape[0], 4096):
        pool[start:start + 4096] = fmt.quantize(cache[start:start + 4096])
    return pool


def bench_fp8(copy_bw, rng, configs=FP8_CONFIGS):
    """The core over FlashMLA's FP8 rows (656 bytes a token, read by a
    tensor-core kernel itself) against the same config's bf16 cache, and over
    rows of one scale per token, which no kernel reads (dequantised first)."""
    fmt, per_token = cumla.fp8_format(L, R, 128), cumla.fp8_format(L, R, L)
    rows = []
    for name in configs:
        cfg = CONFIGS[name]
        batch, q_len, heads, seq = cfg["batch"], cfg["q_len"], cfg["heads"], cfg["seq"]
        q, cache, table, seqlens = make_config(batch, q_len, heads, seq, rng)
        bf16_us = time_core(q, cache, table, seqlens, heads, q_len)
        pool, per_token_pool = fp8_pool(cache, fmt), fp8_pool(cache, per_token)
        del cache
        cp.get_default_memory_pool().free_all_blocks()
        fp8_us = time_core(q, pool, table, seqlens, heads, q_len, fmt)
        # What layouts no kernel reads pay (one scale per token: 644-byte
        # rows): the named blocks dequantised into a bf16 pool by one kernel
        # pass, then the bf16 core; eager calls (the pool is allocated per
        # call, so no graph), back to back.
        plan = cumla.plan(seqlens, heads=heads, q_len=q_len, v_dim=L)
        out = cp.empty(q.shape[:-1] + (L,), dtype=BFLOAT16)
        try:
            dense_us = time_us(lambda: cumla.latent_attention(
                q, per_token_pool, v_dim=L, scale=0.1, seqlens=seqlens, block_table=table, plan=plan, out=out,
                check=False, cache_format=per_token), warmup=1, repeat=5, calls=3)
        except cp.cuda.memory.OutOfMemoryError:
            dense_us = None
        del per_token_pool
        cp.get_default_memory_pool().free_all_blocks()
        kernel = _gpu.fp8_kernel(BFLOAT16, fmt, L, q_len * heads, BLOCK).name  # the one this device launches
        moved = batch * seq * fmt.row_bytes + q.nbytes + q.nbytes * L // D
        rows.append(dict(config=name, kernel=kernel, bf16_us=bf16_us, fp8_us=fp8_us, ratio=fp8_us / bf16_us,
                         per_token_scales_us=dense_us,
                         pct_copy_roofline=100 * moved / copy_bw / (fp8_us * 1e-6)))
        del q, pool, table
        cp.get_default_memory_pool().free_all_blocks()
    return rows


PREFILL = dict(batch=4, q_len=256, heads=16, seq=4096)
PREFILL_CALLS = 10  # calls per timed sample


def cupy_decompress_baseline(q, cache, w_kv, scale):
    """CuPy alone: decompress the whole cache with cupy.matmul (float16), then attend."""
    batch, q_len, heads, _ = q.shape
    c = cache[..., :L].astype(np.float16)
    r = cache[..., L:].astype(np.float16)
    w = w_kv.astype(np.float16).reshape(L, heads, DN + DV)
    k = cp.matmul(c, w[:, :, :DN].reshape(L, -1)).reshape(batch, -1, heads, DN).transpose(0, 2, 3, 1)
    v = cp.matmul(c, w[:, :, DN:].reshape(L, -1)).reshape(batch, -1, heads, DV).transpose(0, 2, 1, 3)
    qh = q.astype(np.float16).transpose(0, 2, 1, 3)  # (B, H, Sq, Dn+R)
    s = (cp.matmul(qh[..., :DN], k) + cp.matmul(qh[..., DN:], r[:, None].transpose(0, 1, 3, 2))).astype(np.float32)
    s *= scale
    s -= s.max(axis=-1, keepdims=True)
    p = cp.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return cp.matmul(p.astype(np.float16), v)


def prefill_inputs(rng):
    """Queries (B, Sq, H, Dn+R), a contiguous cache (B, S, L+R) and w_kv of the prefill chunk, bf16."""
    batch, q_len, heads, seq = (PREFILL[k] for k in ("batch", "q_len", "heads", "seq"))
    q = cp.asarray(rng.standard_normal((batch, q_len, heads, DN + R), dtype=np.float32).astype(BFLOAT16))
    cache = cp.asarray(rng.standard_normal((batch, seq, D), dtype=np.float32).astype(BFLOAT16))
    w_kv = cp.asarray((rng.standard_normal((L, heads * (DN + DV)), dtype=np.float32) / np.sqrt(L)).astype(BFLOAT16))
    return q, cache, w_kv


def bench_decompressed(mm_rate, rng):
    """The tiled-decompression kernel on a prefill chunk, against its compute roofline."""
    batch, q_len, heads, seq = (PREFILL[k] for k in ("batch", "q_len", "heads", "seq"))
    q, cache, w_kv = prefill_inputs(rng)
    scale = 1 / np.sqrt(DN + R)
    # Back to back: the per-call plan and allocations keep these calls out of
    # a CUDA graph, and one eager call's host latency moved it 10-20%.
    us = time_us(lambda: cumla.decode(q, cache, w_kv, rope_dim=R, causal=False, strategy="decompressed", check=False),
                 calls=PREFILL_CALLS)
    absorbed_us = time_us(lambda: cumla.decode(q, cache, w_kv, rope_dim=R, causal=False, strategy="absorbed",
                                               check=False), calls=PREFILL_CALLS)
    cost = cumla.cost(batch=batch, seq_len=seq, heads=heads, q_len=q_len)
    roof_us = cost.decompressed_flops / mm_rate * 1e6
    row = dict(config="prefill", **PREFILL, time_us=us, tflop_s=cost.decompressed_flops / us / 1e6,
               compute_roofline_us=roof_us, pct_roofline=100 * roof_us / us, absorbed_decode_us=absorbed_us,
               auto_picks=cost.best)
    row["cupy_baseline_us"] = time_us(lambda: cupy_decompress_baseline(q, cache, w_kv, scale), 1, 5)
    del q, cache, w_kv
    cp.get_default_memory_pool().free_all_blocks()
    return row


def markdown(result) -> str:
    lines = [
        f"# cumla latent-attention core, {result['gpu']}, {result['date']}",
        "",
        f"Ceilings measured in this run: copy {result['copy_tb_s']:.2f} TB/s (read+write), "
        f"bf16 matmul {result['matmul_tflop_s']:.0f} TFLOP/s "
        + (f"sustained ({result['matmul_via']}; {result['matmul_burst_tflop_s']:.0f} in a short burst; "
           "the roofline uses the sustained rate)." if "matmul_burst_tflop_s" in result  # older runs: one reading
           else f"({result['matmul_via']}).")
        + (f" Under the sustained load: SM clock {result['matmul_clocks']['sm_clock_mhz']:.0f} MHz, "
           f"{result['matmul_clocks']['power_w']:.0f} W." if result.get("matmul_clocks") else ""),
        "",
        "| config | B | Sq | H | S | time µs | TB/s | TFLOP/s | roofline µs | % roofline | portable kernel µs "
        "| portable % roofline | CuPy baseline µs | speed-up | eager call µs | host µs | decode µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    kernels = sorted({r["kernel"] for r in result["configs"]})
    if result.get("smem_limit"):
        lines[4:4] = [f"Tiles sized for {result['smem_limit']} bytes of shared memory per block (--smem-limit).", ""]
    lines[4:4] = [f"Kernel: {', '.join(kernels)}; the portable kernel's time on the same GPU beside it.",
                  "Time: GPU time per call (attention and combine; the plan's schedule is made once, outside) "
                  "of 10 planned calls replayed as one "
                  "CUDA graph; eager call: one Python call between two events (host launch cost included); "
                  "host: Python time to enqueue one call; "
                  "decode: absorb + core + un-absorb, eager.",
                  f"Paged cache: pages of {BLOCK} tokens, {result['table']} over the pool (--table).",
                  ""]
    for r in result["configs"]:
        base = r.get("cupy_baseline_us")
        speed = f"{base / r['time_us']:.1f}x" if base else "n/a"
        base_s = f"{base:.1f}" if base else "OOM" if "cupy_baseline_us" in r else "not run"
        portable = f"{r['portable_us']:.1f}" if r.get("portable_us") else "(same kernel)"
        portable_pct = f"{100 * r['roofline_us'] / r['portable_us']:.1f}%" if r.get("portable_us") else "-"
        decode = f"{r['decode_us']:.1f}" if "decode_us" in r else "not run"
        lines.append(
            f"| {r['config']} | {r['batch']} | {r['q_len']} | {r['heads']} | {r['seq']} | {r['time_us']:.1f} | "
            f"{r['tb_s']:.2f} | {r['tflop_s']:.0f} | {r['roofline_us']:.0f} | {r['pct_roofline']:.1f}% | "
            f"{portable} | {portable_pct} | {base_s} | {speed} | {r['eager_us']:.1f} | {r['host_us']:.1f} | {decode} |"
        )
    d = result.get("decompressed")
    if d:
        lines += [
            "",
            f"Decompressed strategy, prefill chunk B={d['batch']} Sq={d['q_len']} H={d['heads']} S={d['seq']} "
            f"(not causal; auto picks {d['auto_picks']}; time per call of {PREFILL_CALLS} eager calls back to back):",
            "",
            "| time µs | TFLOP/s | compute roofline µs | % roofline | CuPy decompress-then-attend µs | speed-up | absorbed decode µs |",
            "|---|---|---|---|---|---|---|",
            f"| {d['time_us']:.1f} | {d['tflop_s']:.0f} | {d['compute_roofline_us']:.0f} | {d['pct_roofline']:.1f}% | "
            f"{d['cupy_baseline_us']:.1f} | {d['cupy_baseline_us'] / d['time_us']:.1f}x | {d['absorbed_decode_us']:.1f} |",
        ]
    f8 = result.get("fp8")
    if f8:
        lines += ["", "FP8 cache (FlashMLA's 656-byte rows, read by the kernel named) against the bf16 cache, "
                  "same config (target: FP8 at most 0.6x the bf16 time):", "",
                  "| config | FP8 kernel | bf16 µs | FP8 µs | FP8 / bf16 | FP8 % of copy roofline "
                  "| one scale per token (dequantised pool, then bf16) µs |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['config']} | {r['kernel']} | {r['bf16_us']:.1f} | {r['fp8_us']:.1f} | {r['ratio']:.2f} | "
                  f"{r['pct_copy_roofline']:.1f}% | "
                  f"{'OOM' if r['per_token_scales_us'] is None else format(r['per_token_scales_us'], '.1f')} |"
                  for r in f8]
    sv = result.get("serving")
    if sv:
        lines += ["", "Uneven batches (B=64, H=128, bf16, page 64; same total tokens as the even batch):", "",
                  "| batch | tokens | longest | time µs | vs even |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['tokens']} | {v['longest']} | {v['time_us']:.1f} | {v['vs_even']:.2f} |"
                  for k, v in sv["uneven"].items()]
        lines += ["", "Head slices (B=128, S=8192, page 64; memory-bound, % of the copy-bandwidth roofline):", "",
                  "| H | time µs | % roofline |", "|---|---|---|"]
        lines += [f"| {r['heads']} | {r['time_us']:.1f} | {r['pct_roofline']:.1f}% |" for r in sv["heads"]]
        lines += ["", "Page sizes (B=128, S=8192, H=16):", "", "| block | kernel | time µs |", "|---|---|---|"]
        lines += [f"| {r['block']} | {r['kernel']} | {r['time_us']:.1f} |" for r in sv["pages"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--configs", default="ABCDEF")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--core-only", action="store_true",
                        help="only the latent-attention core of each config (no decode, prefill or serving shapes)")
    parser.add_argument("--extras", default=None,
                        help="comma-separated extra sections among fp8,decompressed,serving "
                             "(default: all of them, none with --core-only)")
    parser.add_argument("--table", choices=TABLE_ORDERS, default="shuffled",
                        help="block order of configs A-F's paged caches (default: shuffled)")
    parser.add_argument("--smem-limit", type=int, default=None,
                        help="size the kernels' tiles for this many bytes of shared memory per block "
                             "(166912: an A100's) instead of the device's own limit")
    args = parser.parse_args(argv)
    if args.smem_limit is not None:
        from cumla import _gpu

        _gpu.smem_limit = lambda device_id: args.smem_limit
    known = set(EXTRAS.split(","))
    extras = known if args.extras is None and not args.core_only else set(filter(None, (args.extras or "").split(",")))
    if extras - known:
        parser.error(f"unknown extras {sorted(extras - known)}; known: {EXTRAS}")
    rng = np.random.default_rng(0)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    gpu = props["name"].decode()
    copy_bw = copy_bandwidth()
    mm_rate, mm_burst, via, mm_clocks = matmul_rates()
    print(f"{gpu}: copy {copy_bw / 1e12:.2f} TB/s, bf16 matmul {mm_rate / 1e12:.0f} TFLOP/s sustained, "
          f"{mm_burst / 1e12:.0f} in a burst ({via}); under it {mm_clocks}", flush=True)
    date = datetime.date.today().isoformat()
    rows = []
    result = dict(date=date, gpu=gpu, copy_tb_s=copy_bw / 1e12, matmul_tflop_s=mm_rate / 1e12,
                  matmul_burst_tflop_s=mm_burst / 1e12, matmul_clocks=mm_clocks, matmul_via=via, cupy=cp.__version__,
                  smem_limit=args.smem_limit, table=args.table, configs=rows, decompressed=None, serving=None,
                  fp8=None)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{date}-{gpu.replace(' ', '-')}")

    def save() -> None:  # after every section, so a run stopped by a time limit keeps what it measured
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(markdown(result))

    for name in args.configs:
        row = bench_config(name, CONFIGS[name], copy_bw, mm_rate, rng, not args.no_baseline, not args.core_only,
                           args.table)
        print(json.dumps(row), flush=True)
        rows.append(row)
        save()
    for key, measure in (("fp8", lambda: bench_fp8(copy_bw, rng)),
                         ("decompressed", lambda: bench_decompressed(mm_rate, rng)),
                         ("serving", lambda: bench_serving(copy_bw, rng))):
        if key in extras:
            result[key] = measure()
            print(json.dumps(result[key]), flush=True)
            save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
