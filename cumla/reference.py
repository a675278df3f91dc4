"""Float64 NumPy oracle for MLA decode, written for clarity, not speed.

It follows DESIGN's decompressed form literally: per request it rebuilds the
per-head keys ``[c_t W_uk_h | r_t]`` and values ``c_t W_uv_h`` of the visible
tokens and runs a plain softmax. Inputs are NumPy arrays (any float dtype);
outputs are float64. Every kernel and backend is tested against it.
"""
from __future__ import annotations

import numpy as np


def visible_tokens(seqlen: int, q_len: int, query: int, causal: bool) -> int:
    """Tokens query ``query`` (0-based) of a request with ``seqlen`` cached tokens sees.

    Causal rule: query i sees tokens t < seqlen - q_len + i + 1.
    """
    if not causal:
        return seqlen
    return min(seqlen, max(0, seqlen - q_len + query + 1))


def gather_rows(cache: np.ndarray, request: int, seqlen: int, block_table: np.ndarray | None) -> np.ndarray:
    """The first ``seqlen`` cache rows of one request, contiguous or paged."""
    if block_table is None:
        return cache[request, :seqlen]
    block_size = cache.shape[1]
    t = np.arange(seqlen)
    return cache[block_table[request, t // block_size], t % block_size]


def _lengths(cache: np.ndarray, batch: int, seqlens: np.ndarray | None) -> np.ndarray:
    if seqlens is not None:
        return np.asarray(seqlens)
    return np.full(batch, cache.shape[1])


def _softmax_attend(scores: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float]:
    """softmax(scores) @ values and the log-sum-exp; zeros and -inf when empty."""
    if scores.size == 0:
        return np.zeros(values.shape[1:]), -np.inf
    peak = scores.max()
    weights = np.exp(scores - peak)
    total = weights.sum()
    return weights @ values / total, peak + np.log(total)


def decode(q, cache, w_kv, *, rope_dim=0, scale=None, seqlens=None, block_table=None, causal=True):
    """Reference MLA decode. Same arguments as :func:`cumla.decode`.

    Returns
    -------
    o : ndarray, float64, shape (B, Sq, H, Dv) (or (B, H, Dv) for 3-D q)
    lse : ndarray, float64, shape (B, Sq, H) (or (B, H))
    """
    squeeze = q.ndim == 3
    q = np.asarray(q, dtype=np.float64)
    if squeeze:
        q = q[:, None]
    batch, q_len, heads, qk_dim = q.shape
    nope = qk_dim - rope_dim
    latent = cache.shape[-1] - rope_dim
    w = np.asarray(w_kv, dtype=np.float64).reshape(latent, heads, -1)
    w_uk, w_uv = w[:, :, :nope], w[:, :, nope:]
    scale = 1.0 / np.sqrt(qk_dim) if scale is None else float(scale)
    lengths = _lengths(cache, batch, seqlens)
    o = np.zeros((batch, q_len, heads, w_uv.shape[2]))
    lse = np.full((batch, q_len, heads), -np.inf)
    for b in range(batch):
        rows = gather_rows(cache, b, int(lengths[b]), block_table).astype(np.float64)
        c, r = rows[:, :latent], rows[:, latent:]
        for h in range(heads):
            keys = np.concatenate([c @ w_uk[:, h], r], axis=1)
            values = c @ w_uv[:, h]
            for i in range(q_len):
                n = visible_tokens(int(lengths[b]), q_len, i, causal)
                scores = scale * (keys[:n] @ q[b, i, h])
                o[b, i, h], lse[b, i, h] = _softmax_attend(scores, values[:n])
    if squeeze:
        return o[:, 0], lse[:, 0]
    return o, lse


def latent_attention(q_latent, cache, *, v_dim, scale, seqlens=None, block_table=None, causal=True):
    """Reference attention of absorbed queries over the latent cache (one shared KV head).

    Same arguments as :func:`cumla.latent_attention`; values are the first
    ``v_dim`` columns of each cache row. Returns float64 ``(o, lse)``.
    """
    squeeze = q_latent.ndim == 3
    q = np.asarray(q_latent, dtype=np.float64)
    if squeeze:
        q = q[:, None]
    batch, q_len, heads, _ = q.shape
    lengths = _lengths(cache, batch, seqlens)
    o = np.zeros((batch, q_len, heads, v_dim))
    lse = np.full((batch, q_len, heads), -np.inf)
    for b in range(batch):
        rows = gather_rows(cache, b, int(lengths[b]), block_table).astype(np.float64)
        for i in range(q_len):
            n = visible_tokens(int(lengths[b]), q_len, i, causal)
            for h in range(heads):
                scores = scale * (rows[:n] @ q[b, i, h])
                o[b, i, h], lse[b, i, h] = _softmax_attend(scores, rows[:n, :v_dim])
    if squeeze:
        return o[:, 0], lse[:, 0]
    return o, lse
