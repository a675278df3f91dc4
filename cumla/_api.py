"""The public entry points: validate, plan, then call exactly one backend."""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from . import _cpu
from ._absorb import absorb, absorb_query, unabsorb
from ._arrays import ingest
from ._cost import cost
from ._plan import Plan
from ._validate import (
    Problem,
    check_decode,
    check_flag,
    check_indices,
    check_latent,
    check_out,
    check_scale,
    check_strategy,
)


def _backend(xp: ModuleType):
    if xp.__name__ == "numpy":
        return _cpu
    from . import _gpu

    return _gpu


def _as_4d(q: Any) -> Any:
    return q[:, None] if q.ndim == 3 else q


def _out_4d(problem: Problem, out: Any) -> Any:
    """``out`` seen as (B, Sq, H, V), the backends' layout (a view)."""
    return None if out is None else out.reshape(problem.batch, problem.q_len, problem.heads, problem.v_dim)


def _finish(problem: Problem, o: Any, lse: Any, out: Any, out4: Any, return_lse: bool, plan: Any = None):
    """Shape the results; copy into ``out`` unless the backend wrote there already.
    A plan's LSE buffer is scratch, reused by the next call: return a copy."""
    lse = lse.reshape(problem.lse_shape)
    if return_lse and plan is not None:
        lse = lse.copy()
    if out is not None:
        if o is not out4:
            out4[...] = o
        o = out
    else:
        o = o.reshape(problem.out_shape)
        if o.dtype != problem.dtype:
            o = o.astype(problem.dtype)
    return (o, lse) if return_lse else o


def _check_plan(plan: Any, problem: Problem, xp: ModuleType) -> None:
    if plan is None:
        return
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must come from cumla.plan, got {type(plan).__name__}")
    if plan.xp is not xp:
        raise TypeError(f"plan was made for {plan.xp.__name__} arrays, the inputs are {xp.__name__}")
    rows = problem.q_len * problem.heads
    if not plan.matches(problem.batch, rows, problem.v_dim):
        raise ValueError(
            f"plan was made for batch={plan.batch}, q_len*heads={plan.rows}, v_dim={plan.v_dim}; "
            f"this call has batch={problem.batch}, q_len*heads={rows}, v_dim={problem.v_dim}"
        )


def _check_common(xp, problem, seqlens, block_table, causal, return_lse, check, out, out_dtype):
    """Checks every entry point shares, in the order a user's mistakes are most likely."""
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    check_flag("check", check)
    check_out("out", out, xp, problem.out_shape, out_dtype)
    if check:
        check_indices(problem, seqlens, block_table, xp)


def decode(
    q: Any,
    cache: Any,
    w_kv: Any,
    *,
    rope_dim: int = 0,
    scale: float | None = None,
    seqlens: Any = None,
    block_table: Any = None,
    causal: bool = True,
    strategy: str = "auto",
    return_lse: bool = False,
    out: Any = None,
    plan: Plan | None = None,
    check: bool = True,
    cache_format: Any = None,
):
    """Multi-head Latent Attention decode over a latent KV cache.

    Parameters
    ----------
    q : ndarray, shape (B, H, Dn+R) or (B, Sq, H, Dn+R)
        Queries; head h is ``[q_nope (Dn) | q_rope (R)]``. float32, float16 or
        bfloat16 (``ml_dtypes.bfloat16``); ``cache`` and ``w_kv`` share its dtype.
        Every array argument may be a NumPy or CuPy array or any DLPack
        producer (PyTorch, JAX, ...), taken without a copy; the results are
        NumPy (host inputs) or CuPy (CUDA inputs) arrays.
    cache : ndarray
        Latent rows ``[c (L) | r (R)]``: contiguous, shape (B, S, L+R), or
        paged, shape (num_blocks, block_size, L+R), with ``block_table``.
        Must be C-contiguous.
    w_kv : ndarray, shape (L, H*(Dn+Dv)) or (L, H, Dn+Dv)
        Up-projection; head h's block is ``[W_uk_h (L x Dn) | W_uv_h (L x Dv)]``.
    rope_dim : int, optional
        R, the decoupled-RoPE width at the end of q and of each cache row.
    scale : float, optional
        Positive score scale; default ``1 / sqrt(Dn + R)``.
    seqlens : ndarray of int32, shape (B,), optional
        Cached tokens per request; default S for a contiguous cache, required
        for a paged one. Values in [0, capacity].
    block_table : ndarray of int32, shape (B, max_blocks), optional
        Block ids of each request's tokens in a paged cache. Entries for blocks
        past ``seqlens`` are ignored.
    causal : bool, optional
        With Sq > 1, query i of request b sees tokens t < seqlens[b] - Sq + i + 1.
    strategy : {"auto", "absorbed", "decompressed"}, optional
        "auto" picks the one with fewer FLOPs by :func:`cumla.cost`;
        with a ``plan``, "absorbed" (plans schedule that strategy). On the
        H200, at a 256-token prefill chunk (16 heads), decompressed took
        359-383 µs and absorbed 365-544 µs across runs (``bench/results``).
    return_lse : bool, optional
        Also return the natural-log sum-exp of the scaled scores.
    out : ndarray, optional
        C-contiguous array of the output's shape and q's dtype to write into.
    plan : Plan, optional
        Split-KV schedule from :func:`cumla.plan` for this batch's lengths,
        with ``v_dim`` = L; without one, a schedule is built for the call.
        Ignored by the NumPy backend (after checking that it fits).
    check : bool, optional
        Check ``seqlens``/``block_table`` contents (one small reduction; on
        CuPy the call's only host synchronisation). With ``check=False`` bad
        indices give unspecified values but never out-of-bounds accesses.
    cache_format : Fp8Format, optional
        From :func:`cumla.fp8_format`: ``cache`` is then uint8 FP8 rows of
        ``cache_format.row_bytes`` bytes. On CuPy the absorbed strategy's
        tensor-core kernel reads the rows and dequantises them itself
        (16-bit q, ``group`` a multiple of 8, 16-byte aligned rows, e.g.
        FlashMLA's 656-byte rows); otherwise (float32, the decompressed
        strategy, other layouts) the blocks the call reads are dequantised
        by a separate pass first, which allocates.

    Returns
    -------
    o : ndarray, shape (B, [Sq,] H, Dv), q's dtype
        Zero where a query sees no token; NaN where it sees a NaN in a
        cache row or its query (README, "Conventions").
    lse : ndarray, shape (B, [Sq,] H), float32
        Only with ``return_lse=True``; -inf where a query sees no token,
        NaN where its output is.

    Raises
    ------
    TypeError
        Lists or foreign objects, NumPy mixed with CuPy, wrong dtypes.
    ValueError
        Inconsistent shapes, out-of-range indices, non-finite scale, unknown
        strategy, a wrong ``out``.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> rng = np.random.default_rng(0)
    >>> B, S, H, L, R, Dn, Dv = 2, 64, 4, 32, 16, 16, 16
    >>> q = rng.standard_normal((B, H, Dn + R), dtype=np.float32)
    >>> cache = rng.standard_normal((B, S, L + R), dtype=np.float32)
    >>> w_kv = rng.standard_normal((L, H * (Dn + Dv)), dtype=np.float32)
    >>> cumla.decode(q, cache, w_kv, rope_dim=R).shape
    (2, 4, 16)
    """
    xp, a = ingest(q=q, cache=cache, w_kv=w_kv, seqlens=seqlens, block_table=block_table, out=out)
    q, cache, w_kv, seqlens, block_table, out = (a[k] for k in ("q", "cache", "w_kv", "seqlens", "block_table", "out"))
    problem = check_decode(q, cache, w_kv, rope_dim, seqlens, block_table, cache_format)
    scale = 1.0 / math.sqrt(problem.qk_dim) if scale is None else check_scale(scale)
    strategy = check_strategy(strategy)
    _check_common(xp, problem, seqlens, block_table, causal, return_lse, check, out, problem.dtype)
    _check_plan(plan, problem.as_latent(), xp)
    if plan is not None:
        if strategy == "decompressed":
            raise ValueError("plan schedules the absorbed strategy; pass strategy='absorbed' or 'auto' with it")
        strategy = "absorbed"
    backend = _backend(xp)
    if strategy == "auto":
        strategy = cost(
            batch=problem.batch, seq_len=problem.capacity, heads=problem.heads, q_len=problem.q_len,
            latent_dim=problem.latent_dim, rope_dim=problem.rope_dim, nope_dim=problem.nope_dim,
            v_dim=problem.v_dim, itemsize=problem.dtype.itemsize,
        ).best
        if strategy == "decompressed" and not backend.runs_decompressed(problem):
            strategy = "absorbed"
    q4, out4 = _as_4d(q), _out_4d(problem, out)
    w3 = w_kv.reshape(problem.latent_dim, problem.heads, -1)
    if strategy == "absorbed":
        w_uk, w_uv = absorb(w3, problem.heads, problem.v_dim)
        q_lat_buffer = o_lat_buffer = None
        if plan is not None and xp is not np:  # the plan keeps the temporaries: nothing allocated per call
            lead = (problem.batch, problem.q_len, problem.heads)
            q_lat_buffer = plan.buffer("q_latent", lead + (problem.latent_dim + problem.rope_dim,), problem.dtype)
            o_lat_buffer = plan.buffer("o_latent", lead + (problem.latent_dim,), problem.dtype)
        q_lat = absorb_query(q4, w_uk, problem.rope_dim, xp, out=q_lat_buffer)
        o_lat, lse = backend.latent_attention(
            problem.as_latent(), q_lat, cache, seqlens, block_table, scale, bool(causal), plan, o_lat_buffer
        )
        o = unabsorb(o_lat, w_uv, xp, out=out4)
    else:
        o, lse = backend.decompressed(problem, q4, w3, cache, seqlens, block_table, scale, bool(causal), plan)
    return _finish(problem, o, lse, out, out4, return_lse, plan)


def latent_attention(
    q_latent: Any,
    cache: Any,
    *,
    v_dim: int,
    scale: float,
    seqlens: Any = None,
    block_table: Any = None,
    causal: bool = True,
    return_lse: bool = False,
    out: Any = None,
    plan: Plan | None = None,
    check: bool = True,
    cache_format: Any = None,
):
    """Attention of already-absorbed queries over the latent cache (one shared KV head).

    The core of the absorbed strategy, for engines that absorb ``W_uk`` into
    their queries and apply ``W_uv`` themselves. ``decode`` is absorb +
    ``latent_attention`` + un-absorb.

    Parameters
    ----------
    q_latent : ndarray, shape (B, H, D) or (B, Sq, H, D)
        Absorbed queries, D = L+R = ``cache.shape[-1]``.
    cache : ndarray
        Contiguous (B, S, D) or paged (num_blocks, block_size, D), q's dtype.
    v_dim : int
        Values are the first ``v_dim`` columns of each cache row (L).
    scale : float
        Score scale (MLA: ``1 / sqrt(Dn + R)`` of the original heads).
    seqlens, block_table, causal, return_lse, out, plan, check, cache_format
        As in :func:`cumla.decode` (``plan`` made with ``v_dim`` = this v_dim);
        on the GPU a 16-bit ``out`` must start at a 4-byte-aligned address
        (the kernels store its values in pairs).

    Returns
    -------
    o : ndarray, shape (B, [Sq,] H, v_dim), q's dtype
        As :func:`cumla.decode`'s (zeros, NaN).
    lse : ndarray, shape (B, [Sq,] H), float32
        Only with ``return_lse=True``; as :func:`cumla.decode`'s.

    Raises
    ------
    TypeError, ValueError
        As in :func:`cumla.decode`; ValueError also for a misaligned ``out``.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> rng = np.random.default_rng(0)
    >>> q = rng.standard_normal((2, 8, 48), dtype=np.float32)
    >>> cache = rng.standard_normal((2, 100, 48), dtype=np.float32)
    >>> cumla.latent_attention(q, cache, v_dim=32, scale=0.1).shape
    (2, 8, 32)
    """
    xp, a = ingest(q_latent=q_latent, cache=cache, seqlens=seqlens, block_table=block_table, out=out)
    q_latent, cache, seqlens, block_table, out = (a[k] for k in ("q_latent", "cache", "seqlens", "block_table", "out"))
    problem = check_latent(q_latent, cache, v_dim, seqlens, block_table, cache_format)
    scale = check_scale(scale)
    _check_common(xp, problem, seqlens, block_table, causal, return_lse, check, out, problem.dtype)
    _check_plan(plan, problem, xp)
    out4 = _out_4d(problem, out)
    o, lse = _backend(xp).latent_attention(
        problem, _as_4d(q_latent), cache, seqlens, block_table, scale, bool(causal), plan, out4
    )
    return _finish(problem, o, lse, out, out4, return_lse, plan)
