"""Argument checking shared by every entry point and backend.

Everything here looks at shapes, dtypes and Python scalars only, so it never
synchronises with a device. Index *contents* (``seqlens``, ``block_table``)
are checked by :func:`check_indices`, which costs one small reduction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

from ._arrays import FLOAT_DTYPES, INDEX_DTYPE, dtype_name

STRATEGIES = ("auto", "absorbed", "decompressed")


@dataclass(frozen=True)
class Problem:
    """Sizes of one MLA decode call, inferred from its arguments.

    ``capacity`` is the most tokens a request can hold: S for a contiguous
    cache, ``max_blocks * block_size`` for a paged one.
    """

    batch: int
    q_len: int
    heads: int
    latent_dim: int
    rope_dim: int
    nope_dim: int
    v_dim: int
    paged: bool
    num_blocks: int
    block_size: int
    capacity: int
    squeeze_q_len: bool
    dtype: np.dtype
    cache_format: Any = None  # Fp8Format of a uint8 cache, None for a float cache

    @property
    def qk_dim(self) -> int:
        return self.nope_dim + self.rope_dim

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.squeeze_q_len:
            return (self.batch, self.heads, self.v_dim)
        return (self.batch, self.q_len, self.heads, self.v_dim)

    @property
    def lse_shape(self) -> tuple[int, ...]:
        return self.out_shape[:-1]

    def as_latent(self) -> "Problem":
        """The absorbed core of this problem: queries of dim L+R, values of dim L."""
        return replace(self, nope_dim=self.latent_dim + self.rope_dim, rope_dim=0, v_dim=self.latent_dim)


def _shape(x: Any) -> str:
    return "(" + ", ".join(str(d) for d in x.shape) + ")"


def check_float_dtype(name: str, x: Any, expected: np.dtype | None = None, like: str = "q") -> None:
    """x must be float32/float16/bfloat16, and of ``expected`` dtype (that of ``like``) when given."""
    if expected is not None and x.dtype != expected:
        raise TypeError(
            f"{name} must have the same dtype as {like} ({dtype_name(expected)}), got {dtype_name(x.dtype)}"
        )
    if x.dtype not in FLOAT_DTYPES:
        names = ", ".join(dtype_name(d) for d in FLOAT_DTYPES)
        raise TypeError(f"{name} must have dtype {names}; got {dtype_name(x.dtype)}")


def check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    value = float(scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"scale must be finite and positive, got {value}")
    return value


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_strategy(strategy: Any) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


def _check_rank(name: str, x: Any, ranks: tuple[int, ...], layout: str) -> None:
    if x.ndim not in ranks:
        raise ValueError(f"{name} must have shape {layout}, got {_shape(x)}")


def check_query(q: Any, rope_dim: int) -> tuple[int, int, int, bool]:
    """(batch, q_len, heads, squeezed) of a (B, [Sq,] H, D) query."""
    _check_rank("q", q, (3, 4), "(B, H, Dn+R) or (B, Sq, H, Dn+R)")
    check_float_dtype("q", q)
    squeeze = q.ndim == 3
    batch, heads = q.shape[0], q.shape[-2]
    q_len = 1 if squeeze else q.shape[1]
    if heads < 1:
        raise ValueError(f"q must have at least one head, got shape {_shape(q)}")
    if not squeeze and q_len < 1:
        raise ValueError(f"q must have at least one query token per request, got shape {_shape(q)}")
    if q.shape[-1] <= rope_dim:
        raise ValueError(
            f"q's last dimension ({q.shape[-1]}) must exceed rope_dim ({rope_dim}): "
            "it holds Dn no-rope values then R rope values"
        )
    return batch, q_len, heads, squeeze


def check_rope_dim(rope_dim: Any) -> int:
    if isinstance(rope_dim, bool) or not isinstance(rope_dim, (int, np.integer)):
        raise TypeError(f"rope_dim must be an int, got {type(rope_dim).__name__}")
    if rope_dim < 0:
        raise ValueError(f"rope_dim must be >= 0, got {rope_dim}")
    return int(rope_dim)


def check_cache_format(cache_format: Any) -> None:
    from ._fp8 import Fp8Format

    if cache_format is not None and not isinstance(cache_format, Fp8Format):
        raise TypeError(f"cache_format must come from cumla.fp8_format, got {type(cache_format).__name__}")


def check_cache(
    cache: Any, batch: int, row_dim: int, dtype: np.dtype, seqlens: Any, block_table: Any,
    cache_format: Any = None,
) -> tuple[bool, int, int, int]:
    """(paged, num_blocks, block_size, capacity) of a contiguous or paged cache.

    A float cache has q's dtype and rows of ``row_dim`` = L+R values; an FP8
    cache (``cache_format`` given) is uint8 with ``cache_format.row_bytes`` bytes a row.
    """
    if cache_format is None:
        if cache.dtype == np.uint8:
            raise TypeError("cache is uint8: an FP8 cache needs cache_format=cumla.fp8_format(L, R, group); "
                            f"a float cache must have q's dtype ({dtype_name(dtype)})")
        check_float_dtype("cache", cache, dtype)
        width, what = row_dim, "L+R"
    else:
        if cache.dtype != np.uint8:
            raise TypeError(f"an FP8 cache (cache_format given) must be uint8, got {dtype_name(cache.dtype)}")
        width, what = cache_format.row_bytes, "row_bytes"
    paged = block_table is not None
    layout = f"(num_blocks, block_size, {what})" if paged else f"(B, S, {what})"
    _check_rank("cache", cache, (3,), layout)
    if cache.shape[-1] != width:
        raise ValueError(f"cache must have shape {layout} with {what} = {width}, got {_shape(cache)}")
    if not cache.flags.c_contiguous:
        raise ValueError(f"cache must be C-contiguous, got strides {cache.strides}")
    if paged:
        if seqlens is None:
            raise ValueError("seqlens is required with block_table (a paged cache)")
        check_index_array("block_table", block_table, 2)
        if block_table.shape[0] != batch:
            raise ValueError(
                f"block_table must have shape (B={batch}, max_blocks), got {_shape(block_table)}"
            )
        if cache.shape[1] < 1:
            raise ValueError(f"cache blocks must hold at least one token, got {_shape(cache)}")
        block_size = cache.shape[1]
        capacity = block_table.shape[1] * block_size
    else:
        if cache.shape[0] != batch:
            raise ValueError(f"cache must have shape (B={batch}, S, L+R), got {_shape(cache)}")
        block_size = capacity = cache.shape[1]
    if seqlens is not None:
        check_index_array("seqlens", seqlens, 1)
        if seqlens.shape != (batch,):
            raise ValueError(f"seqlens must have shape (B={batch},), got {_shape(seqlens)}")
    return paged, cache.shape[0], block_size, capacity


def check_index_array(name: str, x: Any, ndim: int) -> None:
    if x.dtype != INDEX_DTYPE:
        raise TypeError(f"{name} must have dtype int32, got {dtype_name(x.dtype)}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {_shape(x)}")


def check_weights(w_kv: Any, heads: int, latent_dim: int, nope_dim: int, dtype: np.dtype) -> int:
    """v_dim of ``w_kv``, (L, H*(Dn+Dv)) or (L, H, Dn+Dv)."""
    check_float_dtype("w_kv", w_kv, dtype)
    _check_rank("w_kv", w_kv, (2, 3), "(L, H*(Dn+Dv)) or (L, H, Dn+Dv)")
    if w_kv.shape[0] != latent_dim:
        raise ValueError(
            f"w_kv must have L = cache.shape[-1] - rope_dim = {latent_dim} rows, got {_shape(w_kv)}"
        )
    if w_kv.ndim == 3:
        if w_kv.shape[1] != heads:
            raise ValueError(f"w_kv must have shape (L, H={heads}, Dn+Dv), got {_shape(w_kv)}")
        per_head = w_kv.shape[2]
    else:
        if w_kv.shape[1] % heads:
            raise ValueError(
                f"w_kv's columns ({w_kv.shape[1]}) must be H={heads} blocks of Dn+Dv, got {_shape(w_kv)}"
            )
        per_head = w_kv.shape[1] // heads
    v_dim = per_head - nope_dim
    if v_dim < 1:
        raise ValueError(
            f"w_kv's per-head block ({per_head}) must exceed Dn = {nope_dim} "
            f"(q.shape[-1] - rope_dim); got w_kv {_shape(w_kv)}"
        )
    return v_dim


def check_out(name: str, out: Any, xp: ModuleType, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if out is None:
        return
    if not isinstance(out, xp.ndarray):
        raise TypeError(f"{name} must be a {xp.__name__}.ndarray like the inputs, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {dtype_name(dtype)}, "
            f"got {tuple(out.shape)} {dtype_name(out.dtype)}"
        )
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not getattr(out.flags, "writeable", True):
        raise ValueError(f"{name} must be writeable")


def check_decode(
    q: Any, cache: Any, w_kv: Any, rope_dim: Any, seqlens: Any, block_table: Any, cache_format: Any = None
) -> Problem:
    """Problem sizes of a ``decode`` call; raises on any inconsistent argument."""
    rope_dim = check_rope_dim(rope_dim)
    check_cache_format(cache_format)
    batch, q_len, heads, squeeze = check_query(q, rope_dim)
    nope_dim = q.shape[-1] - rope_dim
    _check_rank("cache", cache, (3,), "(B, S, L+R) or (num_blocks, block_size, L+R)")
    if cache_format is not None:
        if cache_format.rope_dim != rope_dim:
            raise ValueError(f"rope_dim ({rope_dim}) must equal cache_format.rope_dim ({cache_format.rope_dim})")
        latent_dim = cache_format.latent_dim
    else:
        latent_dim = cache.shape[-1] - rope_dim
    if latent_dim < 1:
        raise ValueError(
            f"cache's last dimension ({cache.shape[-1]}) must exceed rope_dim ({rope_dim})"
        )
    paged, num_blocks, block_size, capacity = check_cache(
        cache, batch, latent_dim + rope_dim, q.dtype, seqlens, block_table, cache_format
    )
    v_dim = check_weights(w_kv, heads, latent_dim, nope_dim, q.dtype)
    return Problem(batch, q_len, heads, latent_dim, rope_dim, nope_dim, v_dim,
                   paged, num_blocks, block_size, capacity, squeeze, q.dtype, cache_format)


def check_latent(q: Any, cache: Any, v_dim: Any, seqlens: Any, block_table: Any,
                 cache_format: Any = None) -> Problem:
    """Problem sizes of a ``latent_attention`` call (queries already absorbed).

    The latent query has dim D = L+R; it is described as nope_dim = D,
    rope_dim = 0, latent_dim = v_dim.
    """
    check_cache_format(cache_format)
    batch, q_len, heads, squeeze = check_query(q, 0)
    dim = q.shape[-1]
    if cache_format is not None and dim != cache_format.width:
        raise ValueError(f"q_latent's last dimension ({dim}) must be the FP8 rows' L+R = {cache_format.width}")
    if isinstance(v_dim, bool) or not isinstance(v_dim, (int, np.integer)):
        raise TypeError(f"v_dim must be an int, got {type(v_dim).__name__}")
    if not 1 <= v_dim <= dim:
        raise ValueError(f"v_dim must be in [1, {dim}] (q's last dimension), got {v_dim}")
    paged, num_blocks, block_size, capacity = check_cache(
        cache, batch, dim, q.dtype, seqlens, block_table, cache_format
    )
    return Problem(batch, q_len, heads, int(v_dim), 0, dim, int(v_dim),
                   paged, num_blocks, block_size, capacity, squeeze, q.dtype, cache_format)


def check_indices(problem: Problem, seqlens: Any, block_table: Any, xp: ModuleType) -> None:
    """Check index contents: 0 <= seqlens <= capacity, block ids in range where used.

    One fused reduction per array; on CuPy the only host synchronisation of
    a ``decode`` call (skip it with ``check=False``).
    """
    if seqlens is None:
        return

    def host(x: Any) -> np.ndarray:
        return x if xp is np else xp.asnumpy(x)

    bad_len = xp.logical_or(seqlens < 0, seqlens > problem.capacity)
    if block_table is None:
        if bool(bad_len.any()):
            raise ValueError(_bad_seqlens_message(problem, host(seqlens)))
        return
    num_blocks = problem.num_blocks
    used = xp.arange(block_table.shape[1], dtype=np.int32)[None, :] * problem.block_size < seqlens[:, None]
    bad_block = used & ((block_table < 0) | (block_table >= num_blocks))
    flags = host(xp.stack([bad_len.any(), bad_block.any()]))  # the one synchronisation
    if flags[0]:
        raise ValueError(_bad_seqlens_message(problem, host(seqlens)))
    if flags[1]:
        table = host(block_table)
        b, j = (int(i) for i in np.argwhere(host(bad_block))[0])
        raise ValueError(
            f"block_table[{b}, {j}] = {table[b, j]} is out of range [0, {num_blocks}) "
            f"for a block in use (seqlens[{b}] covers {j + 1}+ blocks of {problem.block_size})"
        )


def _bad_seqlens_message(problem: Problem, seqlens: np.ndarray) -> str:
    bad = np.flatnonzero((seqlens < 0) | (seqlens > problem.capacity))
    b = int(bad[0])
    what = "S" if not problem.paged else "max_blocks * block_size"
    return (
        f"seqlens must lie in [0, {problem.capacity}] ({what}), "
        f"got seqlens[{b}] = {int(seqlens[b])}"
    )
