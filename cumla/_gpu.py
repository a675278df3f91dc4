"""CuPy backend: NVRTC-compiled kernels from cuda/, launched on the current stream."""
from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from typing import Any

import cupy as cp
import numpy as np

from ._kernels import (
    FP8_ROWS_NAMES, SCHEDULE_TILE, SPLIT_KV_NAMES, THREADS, LatentKernel, arch_for, decompressed_kernel,
    element_of, latent_kernel, options, source,
)
from . import _pdl, _tma
from ._arrays import BFLOAT16
from ._launch import attn_params
from ._plan import INT_MAX, Plan
from ._validate import Problem

LOG2E = 1.4426950408889634


@lru_cache(maxsize=None)
def _arch_of(device_id: int) -> str:
    """NVRTC -arch of a device (sm_90a on Hopper); raises below sm_80."""
    capability = cp.cuda.Device(device_id).compute_capability  # e.g. "90"
    return arch_for(int(capability[:-1]), int(capability[-1]))


@lru_cache(maxsize=None)
def _module(file: str, names: tuple[str, ...], arch: str) -> cp.RawModule:
    """One NVRTC compile per (file, specialisation set, arch); CuPy also caches it on disk."""
    return cp.RawModule(code=source(file), options=options(arch), name_expressions=names)


def kernel(file: str, names: tuple[str, ...], name: str, smem: int = 0) -> cp.RawKernel:
    """Kernel ``name`` of the module compiled for ``names`` for the current device,
    with its shared-memory limit raised (an attribute of the device's function)."""
    return _kernel_on(file, names, name, cp.cuda.Device().id, smem)


@lru_cache(maxsize=None)
def smem_limit(device_id: int) -> int:
    """Shared memory a block of the device can opt in to (227 KB on Hopper, 163 KB on A100, 99 KB on sm_86/89)."""
    runtime = cp.cuda.runtime
    return runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id)


@lru_cache(maxsize=None)
def _kernel_on(file: str, names: tuple[str, ...], name: str, device_id: int, smem: int) -> cp.RawKernel:
    limit = smem_limit(device_id)
    if smem > limit:
        raise RuntimeError(f"{name} needs {smem} bytes of shared memory per block; this GPU (compute capability "
                           f"{cp.cuda.Device(device_id).compute_capability}) allows {limit}: these dims have no "
                           f"kernel for it yet")
    fn = _module(file, names, _arch_of(device_id)).get_function(name)
    if smem > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = smem
    return fn


@lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    return cp.cuda.Device(device_id).attributes["MultiProcessorCount"]


def default_parts(rows: int, v_dim: int = 512, block_rows: int | None = None, per_sm: int = 1,
                  cache_format: Any = None) -> int:
    """CTA columns that give every SM ``per_sm`` CTAs, with ceil(rows / BM) CTAs per column.

    BM is ``block_rows`` (the launching kernel's) when given; else, with an
    FP8 ``cache_format``, that of the kernel that reads it (and its CTAs per
    SM: two for the fragment kernel on Hopper); else the rows per CTA of the
    portable 16-bit kernel for L = ``v_dim`` and R = 64 within this device's
    shared memory (64 once M > 32 with Hopper's 227 KB, 32 with an sm_89
    GPU's 99 KB; the Hopper kernel's 64 give the same parts).
    """
    device_id = cp.cuda.Device().id
    if block_rows is None and cache_format is not None:
        spec = fp8_kernel(BFLOAT16, cache_format, v_dim, rows, device=(_arch_of(device_id), smem_limit(device_id)))
        if spec is not None:
            block_rows, per_sm = spec.rows, spec.per_sm
    if block_rows is None:
        try:
            block_rows = latent_kernel(np.float16, v_dim + 64, v_dim, rows, "sm_80",
                                       smem_limit=smem_limit(device_id)).rows
        except ValueError:  # dims without a 16-bit kernel: the smallest one's rows
            block_rows = latent_kernel(np.float16, 64, 64, rows, "sm_80").rows
    return max(1, per_sm * _sm_count(device_id) // math.ceil(rows / block_rows))


def run_schedule(plan: Plan, seqlens, capacity: int = INT_MAX) -> None:
    fn = kernel("split_kv.cu", SPLIT_KV_NAMES, "make_schedule")
    fn((1,), (1024,), (seqlens, np.int32(plan.batch), np.int32(min(capacity, INT_MAX)),
                       np.int32(SCHEDULE_TILE), np.int32(plan.num_parts), plan.work, plan.first_part,
                       plan.piece_base, plan.prefix, plan.combine_order))


def merge_ranks(gathered, out, lse) -> None:
    """Merge the ranks' partial results ``gathered`` (world, rows, Dv + 1), float32
    ``[o | lse]`` rows, into ``out`` (rows, Dv; 16-bit or float32) and ``lse`` (rows,)."""
    world, rows, width = gathered.shape
    v_dim = width - 1
    if rows == 0:
        return
    fn = kernel("split_kv.cu", SPLIT_KV_NAMES, f"merge_ranks<{element_of(out.dtype)}>")
    fn((math.ceil(rows / 8), math.ceil(v_dim / 128)), (THREADS,),
       (gathered, np.int32(world), np.int32(rows), np.int32(v_dim), out, lse))


def _dense_cache(problem: Problem, cache, seqlens, block_table):
    """An FP8 cache as rows of the input dtype, for the kernels that do not read
    FP8 (decompressed, float32, layouts ``fp8_in_kernel`` refuses): the blocks the
    block table names within each request's length (every row of a contiguous
    cache), dequantised by one kernel pass into a pool allocated here (so this
    path cannot be captured in a CUDA graph). The pool has the smaller of the
    table's entry count and the cache's block count: table order with the
    table renumbered, or the cache's own order. Blocks past a request's length
    are marked missing (-1) in the returned table and not dequantised (one
    launch lists them: ``fp8_block_lists``), so a table padded for its
    longest request costs the pass only the tokens there are."""
    fmt = problem.cache_format
    if fmt is None:
        return problem, cache, block_table
    if block_table is None:
        dense = _dequantize_rows(fmt, cache, None, 1, problem.dtype)
        return replace(problem, cache_format=None), dense.reshape(cache.shape[:-1] + (fmt.width,)), None
    table = cp.ascontiguousarray(block_table)
    by_pool = problem.num_blocks < table.size
    picked = cp.full(problem.num_blocks, -1, dtype=np.int32) if by_pool else cp.empty(table.size, dtype=np.int32)
    renumbered = cp.empty(table.shape, dtype=np.int32)
    if table.size:
        lists = kernel("fp8_rows.cu", FP8_ROWS_NAMES, "fp8_block_lists")
        lists((math.ceil(table.size / THREADS),), (THREADS,),
              (table, cp.ascontiguousarray(seqlens), np.int32(table.shape[1]), np.int64(table.size),
               np.int32(problem.num_blocks), np.int32(problem.block_size), np.int32(problem.capacity),
               np.int32(by_pool), picked, renumbered))
    dense = _dequantize_rows(fmt, cache, picked, problem.block_size, problem.dtype)
    return (replace(problem, cache_format=None, num_blocks=int(picked.size)),
            dense.reshape(picked.size, problem.block_size, fmt.width), renumbered)


def _dequantize_rows(fmt, cache, blocks, block_size: int, dtype):
    """(rows, L+R) of ``dtype``: the FP8 rows of ``cache`` (C-contiguous uint8)
    of blocks ``blocks`` (int32, block_size rows each; the rows of a negative
    entry are left unwritten), or all of them."""
    rows = (blocks.size * block_size) if blocks is not None else cache.size // fmt.row_bytes
    dense = cp.empty((rows, fmt.width), dtype=dtype)
    if rows:
        fn = kernel("fp8_rows.cu", FP8_ROWS_NAMES, f"dequantize_fp8_rows<{element_of(dtype)}>")
        fn((math.ceil(rows / 8),), (THREADS,),
           (cache, np.uint64(0) if blocks is None else blocks, np.int64(rows), np.int32(block_size),
            np.int32(fmt.latent_dim), np.int32(fmt.rope_dim), np.int32(fmt.group), dense))
    return dense


# The kernels copy rows in 16-byte pieces: an array that starts off a 16-byte
# boundary (possible through DLPack) would fault. Small inputs are copied; the
# cache is too big to copy behind the caller's back.
def _on_16_bytes(array):
    return array if array.data.ptr % 16 == 0 else array.copy()


def _check_aligned(name: str, array, alignment: int = 16) -> None:
    if array.data.ptr % alignment:
        raise ValueError(f"{name} must start at a {alignment}-byte-aligned address on the GPU, got "
                         f"{array.data.ptr:#x} (copy it, or take it from an aligned allocation)")


def _index_arrays(problem: Problem, seqlens, block_table):
    """Lengths and block table as the kernels read them: contiguous int32 (strided
    views are copied; contiguous ones pass through), full lengths when omitted."""
    if seqlens is None:
        seqlens = cp.full(problem.batch, problem.capacity, dtype=np.int32)
    seqlens = cp.ascontiguousarray(seqlens)
    return seqlens, None if block_table is None else cp.ascontiguousarray(block_table)


def _params(problem: Problem, plan: Plan, q, cache, seqlens, block_table, o, lse, scale: float, causal: bool,
            w=None):
    """The kernels' AttnParams block for outputs o (B, Sq, H, V) and lse (B, Sq, H)."""
    batch, q_len, heads = o.shape[:3]
    return attn_params(
        q=q, cache=cache, seqlens=seqlens, block_table=block_table, out=o, lse=lse,
        part_out=plan.part_out, part_lse=plan.part_lse, work=plan.work,
        first_part=plan.first_part, piece_base=plan.piece_base,
        batch=batch, rows=q_len * heads, q_len=q_len, heads=heads, capacity=problem.capacity,
        block_size=problem.block_size, max_blocks=0 if block_table is None else block_table.shape[1],
        num_blocks=problem.num_blocks, scale=scale, scale_log2=scale * LOG2E, causal=int(causal), w=w,
    )


@lru_cache(maxsize=None)
def dependent_launches(device_id: int) -> bool:
    """Whether the device runs programmatic dependent launches (compute capability 9.0+)."""
    return int(cp.cuda.Device(device_id).compute_capability[:-1]) >= 9


def _combine(spec, params, plan: Plan) -> None:
    """Merge split requests' partials with the combine step of the attention
    kernel ``spec`` (its name, and the output columns a lane merges): one
    warp per query row of ``plan``'s shape, the requests in its combine
    order. From sm_90 on it is launched as the attention kernel's
    programmatic dependent: with no request split it runs beside that kernel
    (an empty combine then costs nothing after it), else it is scheduled as
    the attention CTAs exit; its merges wait for that kernel's results."""
    warp_columns = 32 * spec.combine_lane_columns
    grid = (math.ceil(plan.rows / 8) * plan.batch, math.ceil(plan.v_dim / warp_columns))  # batch in x: no 65535 limit
    fn = kernel("split_kv.cu", SPLIT_KV_NAMES, spec.combine)
    args = (params, np.int32(plan.v_dim), np.uint64(plan.combine_order.data.ptr))  # NumPy scalars: cumla._pdl's launch
    if dependent_launches(cp.cuda.Device().id):
        _pdl.launch_dependent(fn.kernel.ptr, grid, (THREADS,), args, cp.cuda.get_current_stream().ptr)
    else:
        fn(grid, (THREADS,), args)


def fp8_kernel(dtype: np.dtype, fmt: Any, v_dim: int, rows: int, block_size: int | None = None,
               device: tuple[str, int] | None = None) -> LatentKernel | None:
    """The kernel that reads FP8 rows of layout ``fmt`` for M = ``rows`` query rows
    from pages of ``block_size`` tokens (None: a contiguous cache) on the device
    of ``device`` = (arch, shared memory per block), the current one when None;
    None where the rows are dequantised into 16-bit rows first."""
    if device is None:
        device_id = cp.cuda.Device().id
        device = (_arch_of(device_id), smem_limit(device_id))
    arch, limit = device
    return latent_kernel(dtype, fmt.width, v_dim, rows, arch, block_size, fp8=fmt, smem_limit=limit)


def latent_attention(problem: Problem, q_lat, cache, seqlens, block_table, scale: float, causal: bool,
                     plan: Plan | None = None, out=None):
    """Absorbed core on the GPU: (B, Sq, H, D) queries -> (B, Sq, H, v_dim) in the input dtype, lse."""
    batch, q_len, heads, dim = q_lat.shape
    rows, v_dim = q_len * heads, problem.v_dim
    if out is not None:  # the kernels store 16-bit outputs in pairs: an odd-element view would fault
        _check_aligned("out", out, 4)
    o = out if out is not None else cp.empty((batch, q_len, heads, v_dim), dtype=problem.dtype)
    if batch == 0:
        return o, cp.empty((batch, q_len, heads), dtype=np.float32)
    device_id = cp.cuda.Device().id
    arch, limit = _arch_of(device_id), smem_limit(device_id)
    paged = block_table is not None
    spec = None
    if problem.cache_format is not None:  # a kernel that reads the FP8 rows, else dequantise first
        spec = fp8_kernel(problem.dtype, problem.cache_format, v_dim, rows, problem.block_size if paged else None,
                          (arch, limit))
        if spec is None:
            problem, cache, block_table = _dense_cache(problem, cache, seqlens, block_table)
    q = _on_16_bytes(cp.ascontiguousarray(q_lat.astype(problem.dtype, copy=False)))
    _check_aligned("cache", cache)
    seqlens, block_table = _index_arrays(problem, seqlens, block_table)
    cache_rows = problem.num_blocks * problem.block_size  # (num_blocks or B) x (block_size or S)
    tma_ready = 0 < cache_rows < 2**31
    if spec is None:
        spec = latent_kernel(problem.dtype, dim, v_dim, rows, arch, problem.block_size if paged else None, tma_ready,
                             smem_limit=limit)
    if plan is None:
        parts = default_parts(rows, block_rows=spec.rows, per_sm=spec.per_sm)
        plan = Plan(cp, batch, rows, v_dim, parts).update(seqlens, problem.capacity)
    lse = plan.lse.reshape(batch, q_len, heads)  # scratch: with plan= and out=, nothing is allocated
    args = (_params(problem, plan, q, cache, seqlens, block_table, o, lse, scale, causal),)
    if spec.tma and problem.cache_format is not None:  # FP8 rows: the producer reads them, not TMA
        args += (_tma.UNUSED_MAP, _tma.UNUSED_MAP)
    elif spec.tma:
        box_rows = min(problem.block_size, 64) if paged else 64
        # Single blocks by pages, and whole V halves (used where a page holds a tile).
        args += (_tma.rows_map(cache.data.ptr, cache_rows, dim, box_rows),
                 _tma.rows_map(cache.data.ptr, cache_rows, dim, 64, depth=v_dim // 128))
    attend = kernel(spec.file, spec.module, spec.name, spec.smem)
    attend(spec.grid(plan.num_parts, rows), (spec.threads,), args, shared_mem=spec.smem)
    _combine(spec, args[0], plan)
    return o, lse


def runs_decompressed(problem: Problem) -> bool:
    """Whether the decompressed kernel for ``problem`` fits the current device's
    shared memory (at DeepSeek dims it takes 200 KB: not on an A100); where it
    does not, ``strategy="auto"`` runs the absorbed strategy."""
    device_id = cp.cuda.Device().id
    spec = decompressed_kernel(problem.dtype, problem.latent_dim, problem.rope_dim, problem.nope_dim, problem.v_dim,
                               _arch_of(device_id))
    return spec.smem <= smem_limit(device_id)


def decompressed(problem: Problem, q, w, cache, seqlens, block_table, scale: float, causal: bool,
                 plan: Plan | None = None, out=None):
    """Tiled decompression on the GPU: (B, Sq, H, Dn+R) queries -> (B, Sq, H, Dv), lse.

    Builds its own schedule (one CTA column per SM share of the H x query-tile
    CTAs); split-KV plans are for the absorbed strategy.
    """
    batch, q_len, heads, _ = q.shape
    rows, v_dim = q_len * heads, problem.v_dim
    spec = decompressed_kernel(problem.dtype, problem.latent_dim, problem.rope_dim, problem.nope_dim, v_dim,
                               _arch_of(cp.cuda.Device().id))
    o = out if out is not None else cp.empty((batch, q_len, heads, v_dim), dtype=problem.dtype)
    lse = cp.empty((batch, q_len, heads), dtype=np.float32)
    if batch == 0:
        return o, lse
    problem, cache, block_table = _dense_cache(problem, cache, seqlens, block_table)
    _check_aligned("cache", cache)
    seqlens, block_table = _index_arrays(problem, seqlens, block_table)
    q, w = _on_16_bytes(cp.ascontiguousarray(q)), _on_16_bytes(cp.ascontiguousarray(w))  # alive past the launches
    q_tiles = math.ceil(q_len / spec.queries)
    parts = max(1, _sm_count(cp.cuda.Device().id) // (heads * q_tiles))
    plan = Plan(cp, batch, rows, v_dim, parts).update(seqlens, problem.capacity)
    params = _params(problem, plan, q, cache, seqlens, block_table, o, lse, scale, causal, w)
    attend = kernel("decompressed.cu", (spec.name,), spec.name, spec.smem)
    attend((parts, q_tiles, heads), (THREADS,), (params,), shared_mem=spec.smem)
    _combine(spec, params, plan)
    return o, lse
