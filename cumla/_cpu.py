"""NumPy backend: both strategies in float32 with BLAS matmuls.

Tokens are visited in chunks with an online softmax, so memory stays
bounded by the chunk size whatever the cache length.
"""
from __future__ import annotations

import numpy as np

from ._validate import Problem

CHUNK_TOKENS = 512


class _OnlineSoftmax:
    """Running max, sum and weighted value accumulator over score chunks.

    ``scores`` chunks have shape rows + (C,); ``acc`` has shape rows + (V,).
    Rows that have seen no visible token keep max -inf and sum 0.
    """

    def __init__(self, rows: tuple[int, ...], value_dim: int):
        self.peak = np.full(rows, -np.inf, dtype=np.float32)
        self.total = np.zeros(rows, dtype=np.float32)
        self.acc = np.zeros(rows + (value_dim,), dtype=np.float32)

    def update(self, scores: np.ndarray, attend) -> None:
        """Fold one chunk in; ``attend(p)`` returns p @ values for that chunk."""
        new_peak = np.maximum(self.peak, scores.max(axis=-1))
        safe = np.where(np.isfinite(new_peak), new_peak, np.float32(0))
        alpha = np.exp(self.peak - safe)
        p = np.exp(scores - safe[..., None])
        self.total = self.total * alpha + p.sum(axis=-1)
        self.acc = self.acc * alpha[..., None] + attend(p)
        self.peak = new_peak

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        seen = self.total != 0  # a NaN total (a NaN or infinity in a visible row) stays NaN
        o = np.where(seen[..., None], self.acc / np.where(seen, self.total, 1)[..., None], 0)
        lse = np.where(seen, self.peak + np.log(np.where(seen, self.total, 1)), -np.inf)
        return o.astype(np.float32), lse.astype(np.float32)


def _chunks(cache, request: int, seqlen: int, block_table, cache_format=None):
    """(token indices, rows as float32) for consecutive chunks of one request's tokens.

    FP8 rows (``cache_format`` given) are dequantised chunk by chunk.
    """
    for start in range(0, seqlen, CHUNK_TOKENS):
        t = np.arange(start, min(seqlen, start + CHUNK_TOKENS))
        if block_table is None:
            rows = cache[request, t[0] : t[-1] + 1]
        else:
            rows = cache[block_table[request, t // cache.shape[1]], t % cache.shape[1]]
        yield t, rows.astype(np.float32) if cache_format is None else cache_format.dequantize(rows)


def _limits(seqlen: int, q_len: int, causal: bool) -> np.ndarray:
    """Visible-token count per query (DESIGN's causal rule)."""
    if not causal:
        return np.full(q_len, seqlen)
    return np.clip(seqlen - q_len + np.arange(q_len) + 1, 0, seqlen)


def _mask(scores: np.ndarray, t: np.ndarray, limits: np.ndarray, query_axis: int) -> np.ndarray:
    hidden = t[None, :] >= limits[:, None]  # (Sq, C)
    if not hidden.any():
        return scores
    shape = [1] * scores.ndim
    shape[query_axis], shape[-1] = hidden.shape
    return np.where(hidden.reshape(shape), np.float32(-np.inf), scores)


def _lengths(problem: Problem, seqlens) -> np.ndarray:
    if seqlens is None:
        return np.full(problem.batch, problem.capacity)
    return np.asarray(seqlens)


def latent_attention(problem: Problem, q_lat, cache, seqlens, block_table, scale: float, causal: bool,
                     plan=None, out=None):
    """Absorbed core: q_lat (B, Sq, H, D) -> float32 o (B, Sq, H, v_dim), lse (B, Sq, H).

    ``plan`` and ``out`` are accepted for the backends' common signature; the
    CPU does not split and returns new arrays.
    """
    q_lat = q_lat.astype(np.float32)
    batch, q_len, heads, dim = q_lat.shape
    o = np.zeros((batch, q_len, heads, problem.v_dim), dtype=np.float32)
    lse = np.full((batch, q_len, heads), -np.inf, dtype=np.float32)
    for b, seqlen in enumerate(_lengths(problem, seqlens)):
        rows = (q_lat[b] * np.float32(scale)).reshape(q_len * heads, dim)
        limits = _limits(int(seqlen), q_len, causal)
        state = _OnlineSoftmax((q_len, heads), problem.v_dim)
        for t, kv in _chunks(cache, b, int(seqlen), block_table, problem.cache_format):
            scores = (rows @ kv.T).reshape(q_len, heads, len(t))
            scores = _mask(scores, t, limits, query_axis=0)
            state.update(scores, lambda p: p @ kv[:, : problem.v_dim])
        o[b], lse[b] = state.result()
    return o, lse


def runs_decompressed(problem: Problem) -> bool:
    """Whether this backend runs the decompressed strategy for ``problem``: always."""
    return True


def decompressed(problem: Problem, q, w, cache, seqlens, block_table, scale: float, causal: bool,
                 plan=None, out=None):
    """Decompressed form: per chunk, keys and values are rebuilt from the latent rows.

    q (B, Sq, H, Dn+R), w (L, H, Dn+Dv); computed in float32.
    Returns o (B, Sq, H, Dv), lse (B, Sq, H), float32.
    """
    q, w = q.astype(np.float32), w.astype(np.float32)
    batch, q_len, heads, _ = q.shape
    latent, nope = problem.latent_dim, problem.nope_dim
    w_uk = w[:, :, :nope].reshape(latent, heads * nope)
    w_uv = w[:, :, nope:].reshape(latent, heads * problem.v_dim)
    o = np.zeros((batch, q_len, heads, problem.v_dim), dtype=np.float32)
    lse = np.full((batch, q_len, heads), -np.inf, dtype=np.float32)
    for b, seqlen in enumerate(_lengths(problem, seqlens)):
        qh = (q[b] * np.float32(scale)).transpose(1, 0, 2)  # (H, Sq, Dn+R)
        limits = _limits(int(seqlen), q_len, causal)
        state = _OnlineSoftmax((heads, q_len), problem.v_dim)
        for t, kv in _chunks(cache, b, int(seqlen), block_table, problem.cache_format):
            c, r = kv[:, :latent], kv[:, latent:]
            k_nope = (c @ w_uk).reshape(len(t), heads, nope).transpose(1, 2, 0)  # (H, Dn, C)
            v = (c @ w_uv).reshape(len(t), heads, problem.v_dim).transpose(1, 0, 2)  # (H, C, Dv)
            scores = qh[..., :nope] @ k_nope + qh[..., nope:] @ r.T
            scores = _mask(scores, t, limits, query_axis=1)
            state.update(scores, lambda p: p @ v)
        o_b, lse_b = state.result()
        o[b], lse[b] = o_b.transpose(1, 0, 2), lse_b.T
    return o, lse
