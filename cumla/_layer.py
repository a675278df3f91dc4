"""An MLA attention layer from its weights: encode tokens into the cache, decode over it."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ._absorb import absorb, absorb_query, unabsorb
from ._api import latent_attention
from ._arrays import ingest
from ._cache import PagedLatentCache
from ._rope import rope
from ._validate import check_float_dtype, check_scale


class LatentAttention:
    """Multi-head Latent Attention with absorbed weights computed once.

    Parameters
    ----------
    w_dkv : ndarray, shape (hidden, L+R)
        Down-projection: ``x @ w_dkv = [c_kv (L) | k_rope (R)]`` (k_rope before RoPE).
    w_kv : ndarray, shape (L, H*(Dn+Dv)) or (L, H, Dn+Dv)
        Up-projection as in :func:`cumla.decode`.
    heads, rope_dim, v_dim : int
        H, R and Dv (Dn follows from the shapes).
    rope_base : float, optional
        RoPE base of :func:`cumla.rope`.
    scale : float, optional
        Score scale; default ``1 / sqrt(Dn + R)``.

    Notes
    -----
    DeepSeek also normalises ``c_kv`` (``kv_a_layernorm``) before caching;
    apply it to ``encode``'s latent part if your checkpoint needs it.

    Examples
    --------
    >>> import numpy as np, cumla
    >>> rng = np.random.default_rng(0)
    >>> layer = cumla.LatentAttention(rng.standard_normal((64, 40), dtype=np.float32),
    ...                               rng.standard_normal((32, 2 * 48), dtype=np.float32),
    ...                               heads=2, rope_dim=8, v_dim=24)
    >>> layer.encode(rng.standard_normal((3, 64), dtype=np.float32), np.arange(3)).shape
    (3, 40)
    """

    def __init__(self, w_dkv: Any, w_kv: Any, *, heads: int, rope_dim: int, v_dim: int,
                 rope_base: float = 10000.0, scale: float | None = None):
        xp, a = ingest(w_dkv=w_dkv, w_kv=w_kv)
        w_dkv, w_kv = a["w_dkv"], a["w_kv"]
        check_float_dtype("w_dkv", w_dkv)
        check_float_dtype("w_kv", w_kv, w_dkv.dtype, like="w_dkv")
        if w_dkv.ndim != 2:
            raise ValueError(f"w_dkv must have shape (hidden, L+R), got {tuple(w_dkv.shape)}")
        w_uk, w_uv = absorb(w_kv, heads, v_dim)
        latent = w_kv.shape[0]
        if w_dkv.shape[1] != latent + rope_dim:
            raise ValueError(f"w_dkv must have L+R = {latent + rope_dim} columns (L from w_kv, R = rope_dim), "
                             f"got {tuple(w_dkv.shape)}")
        self.xp, self.dtype = xp, w_dkv.dtype
        self.heads, self.latent_dim, self.rope_dim = heads, latent, rope_dim
        self.nope_dim, self.v_dim = w_uk.shape[1], v_dim
        self.rope_base = float(rope_base)
        self.scale = 1 / math.sqrt(self.nope_dim + rope_dim) if scale is None else check_scale(scale)
        self.w_dkv = w_dkv
        # The absorbed factors, once: (H, Dn, L) and (H, L, Dv), contiguous; float32
        # for NumPy's matmul, the weights' dtype for cuBLAS (which accumulates in float32).
        factor_dtype = np.float32 if xp is np else w_kv.dtype
        self.w_uk = xp.ascontiguousarray(w_uk.astype(factor_dtype))
        self.w_uv = xp.ascontiguousarray(w_uv.astype(factor_dtype))

    @classmethod
    def from_deepseek(cls, kv_a_proj_with_mqa: Any, kv_b_proj: Any, *, heads: int, rope_dim: int = 64,
                      v_dim: int = 128, **kwargs: Any) -> "LatentAttention":
        """Build from DeepSeek checkpoint tensors (no torch needed).

        Parameters
        ----------
        kv_a_proj_with_mqa : ndarray, shape (L+R, hidden)
            ``kv_a_proj_with_mqa.weight`` (a Linear's (out, in) layout).
        kv_b_proj : ndarray, shape (H*(Dn+Dv), L)
            ``kv_b_proj.weight``.
        heads, rope_dim, v_dim, **kwargs
            As in the constructor.
        """
        _, a = ingest(kv_a_proj_with_mqa=kv_a_proj_with_mqa, kv_b_proj=kv_b_proj)
        return cls(a["kv_a_proj_with_mqa"].T, a["kv_b_proj"].T, heads=heads, rope_dim=rope_dim, v_dim=v_dim,
                   **kwargs)

    def encode(self, x: Any, positions: Any) -> Any:
        """Cache rows ``[c_kv | rope(k_rope, positions)]`` of new tokens.

        x : (n, hidden); positions : (n,) integers. Returns (n, L+R) in the layer's dtype.
        """
        xp, a = ingest(x=x, positions=positions)
        x, positions = a["x"], a["positions"]
        if x.ndim != 2 or x.shape[1] != self.w_dkv.shape[0]:
            raise ValueError(f"x must have shape (n, hidden={self.w_dkv.shape[0]}), got {tuple(x.shape)}")
        rows = xp.matmul(x.astype(np.float32), self.w_dkv.astype(np.float32))
        rotated = rope(rows[:, self.latent_dim:], positions, base=self.rope_base)
        return xp.concatenate([rows[:, : self.latent_dim], rotated], axis=1).astype(self.dtype)

    def rotate_queries(self, q: Any, positions: Any) -> Any:
        """Apply RoPE to the last R values of each head of q (B, [Sq,] H, Dn+R).

        ``positions`` broadcasts to q.shape[:-2] (e.g. (B,) or (B, Sq)).
        """
        xp, a = ingest(q=q, positions=positions)
        q, positions = a["q"], a["positions"]
        rotated = rope(q[..., self.nope_dim:], positions[..., None], base=self.rope_base)
        return xp.concatenate([q[..., : self.nope_dim], rotated], axis=-1)

    def decode(self, q: Any, cache: Any, *, seq_ids: Sequence[int] | None = None, seqlens: Any = None,
               block_table: Any = None, causal: bool = True, return_lse: bool = False, plan: Any = None,
               check: bool = True):
        """Attention of q (B, [Sq,] H, Dn+R), RoPE already applied, over a latent cache.

        ``cache`` is an array (with ``seqlens``/``block_table`` as in
        :func:`cumla.decode`) or a :class:`PagedLatentCache` with ``seq_ids``.
        Runs the absorbed strategy with the precomputed factors. Returns o
        (B, [Sq,] H, Dv) in q's dtype (and lse with ``return_lse``).
        """
        cache_format = None
        if isinstance(cache, PagedLatentCache):
            if seq_ids is None:
                raise ValueError("seq_ids is required with a PagedLatentCache")
            index = cache.batch(seq_ids)
            cache, seqlens, block_table = index["cache"], index["seqlens"], index["block_table"]
            cache_format = index["cache_format"]
        xp, a = ingest(q=q)
        q = a["q"]
        if q.ndim not in (3, 4) or q.shape[-2:] != (self.heads, self.nope_dim + self.rope_dim):
            raise ValueError(f"q must have shape (B, [Sq,] H={self.heads}, Dn+R={self.nope_dim + self.rope_dim}), "
                             f"got {tuple(q.shape)}")
        q4 = q[:, None] if q.ndim == 3 else q
        q_lat = absorb_query(q4, self.w_uk, self.rope_dim, xp).astype(self.dtype, copy=False)
        o_lat, lse = latent_attention(q_lat, cache, v_dim=self.latent_dim, scale=self.scale, seqlens=seqlens,
                                      block_table=block_table, causal=causal, return_lse=True, plan=plan,
                                      check=check, cache_format=cache_format)
        o = unabsorb(o_lat, self.w_uv, xp).astype(q.dtype, copy=False)
        if q.ndim == 3:
            o, lse = o[:, 0], lse[:, 0]
        return (o, lse) if return_lse else o
